using System.Net;
using Dtrain.Rpc;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>Builds and runs a worker: a Kestrel gRPC server (control + collective) and the link to the coordinator.</summary>
public static class WorkerHost
{
    /// <summary>Options from appsettings.json, DTRAIN_-prefixed environment variables (DTRAIN_Worker__Coordinator) and --Worker:Key=value arguments, in that order.</summary>
    public static WorkerOptions ReadOptions(string[] args) => GrpcServerHost.ReadOptions<WorkerOptions>("Worker", args);

    public static WebApplication Build(WorkerOptions options, Action<ILoggingBuilder>? logging = null)
    {
        var errors = options.Validate();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var builder = GrpcServerHost.CreateBuilder(options.Listen, options.Port, options.MaxMessageBytes, logging,
            k => k.Limits.Http2.MaxStreamsPerConnection = 1000, detailedErrors: true);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<WorkerIdentity>();
        builder.Services.AddSingleton<WorkerSlot>();
        builder.Services.AddSingleton<IRingConnector, GrpcRingConnector>();
        builder.Services.AddHostedService<CoordinatorLink>();
        GrpcRingConnector.AddServices(builder.Services, options);
        var app = builder.Build();
        app.MapGrpcService<WorkerControlService>();
        GrpcRingConnector.MapServices(app);
        // Leave the ring before Kestrel drains: an open collective stream would hold graceful shutdown for its full timeout.
        app.Lifetime.ApplicationStopping.Register(() => app.Services.GetRequiredService<WorkerSlot>().ReleaseAsync("worker shutting down").GetAwaiter().GetResult());
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var port = GrpcServerHost.BoundAddress(app).Port;
            var host = options.AdvertiseHost ?? (options.Listen is "0.0.0.0" or "::" ? Dns.GetHostName() : options.Listen);
            app.Services.GetRequiredService<WorkerIdentity>().SetAddress($"http://{host}:{port}");
        });
        return app;
    }

    public static async Task<int> RunAsync(WorkerOptions options, CancellationToken stop = default)
    {
        await using var app = Build(options);
        await app.StartAsync(stop).ConfigureAwait(false);
        await app.WaitForShutdownAsync(stop).ConfigureAwait(false);
        return 0;
    }
}
