using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Collective;

/// <summary>One-call registration of the collective endpoint in a worker's ASP.NET Core host.</summary>
public static class CollectiveHosting
{
    /// <summary>Room for the RingChunk fields around the data bytes.</summary>
    public const int MessageOverheadBytes = 64 * 1024;

    /// <summary>
    /// Listens on <paramref name="endpoint"/> with HTTP/2 only and registers gRPC, <see cref="CollectiveService"/> options
    /// and the <see cref="RingMailboxes"/> singleton. Then call <see cref="MapDtrainCollective"/> on the built app.
    /// </summary>
    public static WebApplicationBuilder AddDtrainCollective(this WebApplicationBuilder builder, IPEndPoint endpoint, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(endpoint);
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.ListenDtrainCollective(endpoint));
        builder.Services.AddDtrainCollective(maxPieceFloats);
        return builder;
    }

    /// <summary>gRPC with the message limits, HTTP/2 flow-control windows and keep-alive, and the <see cref="RingMailboxes"/> singleton (no listener).</summary>
    public static IServiceCollection AddDtrainCollective(this IServiceCollection services, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddSingleton(new RingMailboxes(maxPieceFloats));
        services.AddSingleton(sp => new DataPlane(sp.GetRequiredService<RingMailboxes>(), sp.GetService<DataPlaneOptions>(), sp.GetService<Microsoft.Extensions.Logging.ILogger<DataPlane>>()));
        services.AddGrpc().AddServiceOptions<CollectiveService>(options =>
        {
            options.MaxReceiveMessageSize = maxPieceFloats * sizeof(float) + MessageOverheadBytes;
            options.MaxSendMessageSize = MessageOverheadBytes;
        });
        services.Configure<KestrelServerOptions>(ConfigureHttp2Limits);
        return services;
    }

    /// <summary>Large HTTP/2 windows (a 1 MiB piece must not wait for window updates) and keep-alive pings.</summary>
    public static void ConfigureHttp2Limits(KestrelServerOptions kestrel)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        kestrel.Limits.Http2.InitialStreamWindowSize = 16 * 1024 * 1024;
        kestrel.Limits.Http2.InitialConnectionWindowSize = 32 * 1024 * 1024;
        kestrel.Limits.Http2.KeepAlivePingDelay = TimeSpan.FromSeconds(10);
        kestrel.Limits.Http2.KeepAlivePingTimeout = TimeSpan.FromSeconds(20);
    }

    /// <summary>An HTTP/2-only (cleartext h2c) listener for the collective traffic.</summary>
    public static KestrelServerOptions ListenDtrainCollective(this KestrelServerOptions kestrel, IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        kestrel.Listen(endpoint, listen => listen.Protocols = HttpProtocols.Http2);
        return kestrel;
    }

    /// <summary>Maps <see cref="CollectiveService"/> (the <c>Push</c> endpoint).</summary>
    public static GrpcServiceEndpointConventionBuilder MapDtrainCollective(this IEndpointRouteBuilder endpoints) =>
        endpoints.MapGrpcService<CollectiveService>();
}
