using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server.Auth;

/// <summary>Wires tokens, roles and the audit log into the coordinator (two calls from <see cref="CoordinatorHost"/>).</summary>
public static class CoordinatorAuth
{
    /// <summary>Registers the audit log, the token check and the Jobs service's auth interceptor.</summary>
    public static void AddCoordinatorAuth(this IServiceCollection services, CoordinatorOptions options)
    {
        // A broken or group-writable tokens file stops the coordinator before it listens (InvalidDataException naming it).
        TokenStore.Load(TokenStore.PathIn(options.DataDir));
        services.AddSingleton(sp => new AuditLog(options.DataDir, sp.GetRequiredService<ILoggerFactory>().CreateLogger(AuditLog.Category), sp.GetRequiredService<TimeProvider>()));
        services.AddSingleton<TokenAuthenticator>();
        services.AddSingleton<JobAccess>();
        services.AddGrpc().AddServiceOptions<JobsService>(o => o.Interceptors.Add<AuthInterceptor>());
    }

    /// <summary>
    /// Before the server starts: audits worker admission, departure and loss (<see cref="WorkerRegistry"/>'s events),
    /// and logs once listening whether auth is on and why.
    /// </summary>
    public static void UseCoordinatorAuth(this WebApplication app)
    {
        var auth = app.Services.GetRequiredService<TokenAuthenticator>();
        var audit = app.Services.GetRequiredService<AuditLog>();
        var registry = app.Services.GetRequiredService<WorkerRegistry>();
        registry.WorkerRegistered += w => audit.Write("worker.join", null, null,
            ("worker", w.Id), ("name", w.Name), ("address", w.Address), ("cores", w.Capabilities.Cores), ("device", w.Capabilities.Device));
        registry.WorkerDeparted += (w, reason) => audit.Write("worker.leave", null, null,
            ("worker", w.Id), ("name", w.Name), ("address", w.Address), ("reason", reason), ("job", w.JobId == "" ? null : w.JobId));
        registry.WorkerLost += w => audit.Write("worker.lost", null, null,
            ("worker", w.Id), ("name", w.Name), ("address", w.Address), ("job", w.JobId == "" ? null : w.JobId));
        app.Lifetime.ApplicationStarted.Register(auth.LogStartup);
    }
}
