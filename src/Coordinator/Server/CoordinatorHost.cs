using Dtrain.Dashboard;
using Dtrain.Rpc;
using Grpc.AspNetCore.Server;
using Dtrain.Server.Auth;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>Builds the coordinator: Kestrel (HTTP/2; TLS per <see cref="CoordinatorSecurity"/>) serving the membership and jobs services, the job queue and its runner.</summary>
public static class CoordinatorHost
{
    /// <summary>Options from appsettings.json, DTRAIN_-prefixed environment variables (DTRAIN_Coordinator__Port) and --Coordinator:Key=value arguments.</summary>
    public static CoordinatorOptions ReadOptions(string[] args) => GrpcServerHost.ReadOptions<CoordinatorOptions>("Coordinator", args);

    /// <param name="services">Last changes to the services (tests replace the clock with a fake one here).</param>
    public static WebApplication Build(CoordinatorOptions options, Action<ILoggingBuilder>? logging = null, Action<IServiceCollection>? services = null)
    {
        var errors = options.Validate();
        if (errors.Count > 0) throw new ArgumentException(string.Join("; ", errors));
        // Owner-only from the start (its tokens, job store, jobs' data and checkpoints); an existing directory keeps its
        // mode. One that cannot be made is reported by the job store, as before.
        try
        {
            PrivateFiles.CreateDirectory(options.DataDir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        var security = CoordinatorSecurity.Create(options);
        var builder = GrpcServerHost.CreateBuilder(options.Listen, options.Port, options.MaxMessageBytes, logging,
            security: security.Server, insecureWarning: security.InsecureWarning, httpPort: options.HttpPort);
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton(security);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddSingleton<WorkerRegistry>();
        builder.Services.TryAddSingleton<ICallerIdentity, AuthenticatedCallerIdentity>();
        builder.Services.AddSingleton<UploadStore>();
        builder.Services.AddSingleton<DataAccess>();
        builder.Services.AddSingleton<IClientMessageFilter, ServerPathFilter>();
        builder.Services.AddSingleton<CallRateLimits>();
        builder.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<CallRateLimits>());
        builder.Services.AddSingleton<WorkerClients>();
        builder.Services.AddSingleton<ClusterPrepare>();
        builder.Services.AddSingleton<JobRunner>();
        builder.Services.AddSingleton(sp => new JobStore(Path.Combine(options.DataDir, "jobs.db"), sp.GetRequiredService<ILogger<JobStore>>()));
        builder.Services.AddSingleton<JobManager>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<JobManager>());
        builder.Services.AddDashboard();
        builder.Services.AddSingleton<StallMonitor>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<StallMonitor>());
        builder.Services.AddSingleton<CoordinatorMetrics>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<CoordinatorMetrics>());
        services?.Invoke(builder.Services);
        builder.Services.AddCoordinatorAuth(options);
        var app = builder.Build();
        app.UseCoordinatorAuth();
        app.MapGrpcService<MembershipService>();
        app.MapGrpcService<JobsService>();
        DashboardEndpoints.Map(app);
        GrpcServerHost.MapHealth(app, ReadinessService);
        if (options.HttpPort is >= 0) CoordinatorMetrics.Map(app, options);
        app.Lifetime.ApplicationStarted.Register(() => app.Services.GetRequiredService<ServerHealth>().Set(ReadinessService, true));
        return app;
    }

    /// <summary>The http(s)://host:port the coordinator listens on, once started.</summary>
    public static string Address(WebApplication app) => GrpcServerHost.LocalAddress(app);

    /// <summary>The http(s)://host:port of the dashboard and /metrics listener, once started; null when off (<see cref="CoordinatorOptions.HttpPort"/>).</summary>
    public static string? HttpAddress(WebApplication app) => GrpcServerHost.HttpAddress(app);

    /// <summary>The health service name that is SERVING while the coordinator accepts jobs.</summary>
    public const string ReadinessService = "dtrain.jobs.v1.Jobs";
}
