using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Dtrain.Rpc;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Collective;

/// <summary>One-call registration of the collective endpoint in a worker's ASP.NET Core host.</summary>
public static class CollectiveHosting
{
    /// <summary>Room for the RingChunk fields around the data bytes.</summary>
    public const int MessageOverheadBytes = 64 * 1024;

    /// <summary>
    /// Listens on <paramref name="endpoint"/> with HTTP/2 only (<see cref="Http2Settings.Default"/>) and registers gRPC, <see cref="CollectiveService"/> options
    /// and the <see cref="RingMailboxes"/> singleton. Then call <see cref="MapDtrainCollective"/> on the built app.
    /// </summary>
    public static WebApplicationBuilder AddDtrainCollective(this WebApplicationBuilder builder, IPEndPoint endpoint, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(endpoint);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            Http2Settings.Default.ApplyTo(kestrel);
            kestrel.ListenDtrainCollective(endpoint);
        });
        builder.Services.AddDtrainCollective(maxPieceFloats);
        return builder;
    }

    /// <summary>
    /// gRPC with the message limits, the <see cref="RingMailboxes"/> and <see cref="DataPlane"/> singletons (no listener; the
    /// Kestrel it runs in has its HTTP/2 settings from whoever made the listener: <see cref="GrpcServerHost"/> on a worker).
    /// </summary>
    public static IServiceCollection AddDtrainCollective(this IServiceCollection services, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddSingleton(new RingMailboxes(maxPieceFloats));
        services.AddSingleton(sp => new DataPlane(sp.GetRequiredService<RingMailboxes>(), sp.GetService<DataPlaneOptions>(), sp.GetService<Microsoft.Extensions.Logging.ILogger<DataPlane>>(),
            sp.GetService<TimeProvider>()));
        services.AddGrpc().AddServiceOptions<CollectiveService>(options =>
        {
            options.MaxReceiveMessageSize = maxPieceFloats * sizeof(float) + MessageOverheadBytes;
            options.MaxSendMessageSize = MessageOverheadBytes;
        });
        return services;
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
