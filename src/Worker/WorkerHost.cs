using Dtrain.Collective;
using System.Net;
using System.Net.NetworkInformation;
using Dtrain.Rpc;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>Builds and runs a worker: a Kestrel gRPC server (control + collective; TLS per <see cref="WorkerSecurity"/>) and the link to the coordinator.</summary>
public static class WorkerHost
{
    /// <summary>Options from appsettings.json, DTRAIN_-prefixed environment variables (DTRAIN_Worker__Coordinator) and --Worker:Key=value arguments, in that order.</summary>
    public static WorkerOptions ReadOptions(string[] args) => GrpcServerHost.ReadOptions<WorkerOptions>("Worker", args);

    /// <param name="configure">Called before the app is built, e.g. for tests to add a gRPC interceptor.</param>
    public static WebApplication Build(WorkerOptions options, Action<ILoggingBuilder>? logging = null, Action<WebApplicationBuilder>? configure = null)
    {
        var errors = options.Validate();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        var security = WorkerSecurity.Create(options);
        var builder = GrpcServerHost.CreateBuilder(options.Listen, options.Port, options.MaxMessageBytes, logging,
            k => k.Limits.Http2.MaxStreamsPerConnection = 1000, detailedErrors: true, security: security.Server, insecureWarning: security.InsecureWarning,
            httpPort: options.HttpPort);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(security);
        builder.Services.AddSingleton<WorkerIdentity>();
        builder.Services.AddSingleton<WorkerSlot>();
        builder.Services.AddSingleton<IRingConnector, DataPlaneRingConnector>();
        builder.Services.AddSingleton<StageLinkConnector>();
        builder.Services.AddSingleton<IStageLinkConnector>(sp => sp.GetRequiredService<StageLinkConnector>());
        builder.Services.AddSingleton(new Dtrain.Collective.DataPlaneOptions { Listen = options.Listen, TcpPort = options.DataPort, Timeouts = options.CollectiveTimeouts });
        builder.Services.AddSingleton<IPeerState, GrpcPeerState>();
        builder.Services.AddSingleton<WorkerRuntime>();
        builder.Services.AddSingleton<WorkerPrepare>();
        builder.Services.AddSingleton<WorkerMetrics>();
        // SIGTERM drains in CoordinatorLink.StoppingAsync (finish the step, tell the coordinator, release the ring)
        // before Kestrel stops; the host must give it that long.
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(options.DrainTimeoutSeconds + 15));
        builder.Services.AddSingleton<CoordinatorLink>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<CoordinatorLink>());
        // The collective service (ring Hello/attach and the gRPC ring streams) on the worker's port.
        builder.Services.AddDtrainCollective();
        // Pipeline stages' point-to-point links (activations forward, gradients back) share the worker's port.
        builder.Services.AddSingleton<Dtrain.Distributed.Pipeline.StageMailboxes>();
        configure?.Invoke(builder);
        var app = builder.Build();
        app.MapGrpcService<WorkerControlService>();
        app.MapDtrainCollective();
        app.MapGrpcService<Dtrain.Distributed.Pipeline.StageLinkService>();
        GrpcServerHost.MapHealth(app, ReadinessService);
        if (options.HttpPort is >= 0) MetricsEndpoint.Map(app, app.Services.GetRequiredService<WorkerMetrics>().Registry, MetricsEndpoint.WorkerGate(app.Services, options.MetricsToken));
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var port = GrpcServerHost.BoundAddress(app).Port;
            var identity = app.Services.GetRequiredService<WorkerIdentity>();
            if (app.Services.GetRequiredService<ServerEndpoints>().Http?.IPEndPoint is { } http)
                identity.HttpAddress = $"{security.Scheme}://{AdvertisedHost(options)}:{http.Port}";
            identity.SetAddress($"{security.Scheme}://{AdvertisedHost(options)}:{port}");
        });
        return app;
    }

    /// <summary>The health service name that is SERVING while this worker is registered with a coordinator and not draining.</summary>
    public const string ReadinessService = "dtrain.worker.v1.WorkerControl";

    /// <summary>
    /// The host peers dial: <see cref="WorkerOptions.AdvertiseHost"/>; else the listen address; for a wildcard listen
    /// address, the first non-loopback IPv4 address of an interface that is up (a container's or pod's own address,
    /// which peers on its network can reach, unlike a container's host name), else the host name.
    /// </summary>
    public static string AdvertisedHost(WorkerOptions options)
    {
        if (!string.IsNullOrWhiteSpace(options.AdvertiseHost)) return options.AdvertiseHost.Trim();
        if (options.Listen is not ("0.0.0.0" or "::")) return options.Listen;
        var address = NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up && n.NetworkInterfaceType != NetworkInterfaceType.Loopback)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses)
            .Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        return address?.ToString() ?? Dns.GetHostName();
    }

    public static async Task<int> RunAsync(WorkerOptions options, CancellationToken stop = default)
    {
        await using var app = Build(options);
        await app.StartAsync(stop).ConfigureAwait(false);
        await app.WaitForShutdownAsync(stop).ConfigureAwait(false);
        return 0;
    }
}
