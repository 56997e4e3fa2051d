using System.Net;
using Dtrain.Rpc;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>Builds the coordinator: Kestrel (HTTP/2) serving the membership and jobs services, the job queue and its runner.</summary>
public static class CoordinatorHost
{
    /// <summary>Options from appsettings.json, DTRAIN_-prefixed environment variables (DTRAIN_Coordinator__Port) and --Coordinator:Key=value arguments.</summary>
    public static CoordinatorOptions ReadOptions(string[] args)
    {
        var config = new ConfigurationBuilder()
            .AddJsonFile("appsettings.json", optional: true)
            .AddEnvironmentVariables("DTRAIN_")
            .AddCommandLine(args)
            .Build();
        return config.GetSection("Coordinator").Get<CoordinatorOptions>() ?? new CoordinatorOptions();
    }

    public static WebApplication Build(CoordinatorOptions options, Action<ILoggingBuilder>? logging = null)
    {
        var errors = options.Validate();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Grpc", LogLevel.Warning);
        logging?.Invoke(builder.Logging);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Parse(options.Listen), options.Port, l => l.Protocols = HttpProtocols.Http2);
            k.Limits.MaxRequestBodySize = options.MaxMessageBytes;
            k.Limits.Http2.InitialConnectionWindowSize = 16 * 1024 * 1024;
            k.Limits.Http2.InitialStreamWindowSize = 16 * 1024 * 1024;
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = options.MaxMessageBytes;
            o.MaxSendMessageSize = options.MaxMessageBytes;
            o.Interceptors.Add<ServerInterceptor>();
        });
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton<WorkerRegistry>();
        builder.Services.AddSingleton<UploadStore>();
        builder.Services.AddSingleton<WorkerClients>();
        builder.Services.AddSingleton<JobRunner>();
        builder.Services.AddSingleton<JobManager>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<JobManager>());
        var app = builder.Build();
        app.MapGrpcService<MembershipService>();
        app.MapGrpcService<JobsService>();
        return app;
    }

    /// <summary>The http://host:port the coordinator listens on, once started.</summary>
    public static string Address(WebApplication app)
    {
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return bound.Replace("[::]", "127.0.0.1", StringComparison.Ordinal).Replace("0.0.0.0", "127.0.0.1", StringComparison.Ordinal);
    }
}
