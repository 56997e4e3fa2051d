using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Prometheus;

namespace Dtrain.Rpc;

/// <summary>
/// Prometheus /metrics on a server's HTTP/1.1 listener (<see cref="GrpcServerHost.RequireHttpPort{T}"/>), from the server's own
/// <see cref="CollectorRegistry"/> (never the static default one: several coordinators and workers in one process, as in
/// tests, keep their figures apart). Read-only operational figures; with a scrape token, only requests that carry it
/// ("Authorization: Bearer TOKEN") are answered, others get 401.
/// </summary>
public static class MetricsEndpoint
{
    public const string Path = "/metrics";

    /// <summary>A new registry with the process's own figures (CPU, memory, GC, threads: prometheus-net's DotNetStats).</summary>
    public static CollectorRegistry NewRegistry()
    {
        var registry = Metrics.NewCustomRegistry();
        DotNetStats.Register(registry);
        return registry;
    }

    /// <summary>Maps GET <see cref="Path"/> for <paramref name="registry"/> (HTTP listener only; <paramref name="token"/> required when set).</summary>
    public static void Map(WebApplication app, CollectorRegistry registry, string? token)
    {
        var endpoint = app.MapMetrics(Path, registry);
        RequireToken(endpoint, token);
        GrpcServerHost.RequireHttpPort(endpoint, app);
    }

    /// <summary>Answers 401 to a request without "Authorization: Bearer <paramref name="token"/>" (nothing when the token is unset).</summary>
    public static T RequireToken<T>(T endpoint, string? token) where T : IEndpointConventionBuilder
    {
        if (string.IsNullOrWhiteSpace(token)) return endpoint;
        var expected = Encoding.UTF8.GetBytes("Bearer " + token.Trim());
        endpoint.Add(b =>
        {
            var inner = b.RequestDelegate;
            if (inner is null) return;
            b.RequestDelegate = http =>
            {
                var given = Encoding.UTF8.GetBytes(http.Request.Headers.Authorization.ToString());
                if (CryptographicOperations.FixedTimeEquals(given, expected)) return inner(http);
                http.Response.StatusCode = StatusCodes.Status401Unauthorized;
                http.Response.Headers.WWWAuthenticate = "Bearer realm=\"dtrain metrics\"";
                return Task.CompletedTask;
            };
        });
        return endpoint;
    }
}
