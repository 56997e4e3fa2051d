using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Prometheus;

namespace Dtrain.Rpc;

/// <summary>Why a request to the HTTP listener is refused: its status (401, 403) and a message naming what is missing.</summary>
public sealed record HttpRefusal(int Status, string Message);

/// <summary>Decides whether a request may read what an endpoint serves: null = yes.</summary>
public delegate HttpRefusal? HttpGate(HttpContext http);

/// <summary>
/// Prometheus /metrics on a server's HTTP/1.1 listener (<see cref="GrpcServerHost.RequireHttpPort{T}"/>), from the server's own
/// <see cref="CollectorRegistry"/> (never the static default one: several coordinators and workers in one process, as in
/// tests, keep their figures apart). Read-only operational figures, but every job's and worker's: each server admits a
/// scrape through its <see cref="HttpGate"/> — over TLS a client certificate from the cluster CA, as its gRPC port
/// asks, and a bearer token where one is configured (<see cref="WorkerGate"/>; the coordinator's own in CoordinatorMetrics).
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

    /// <summary>Maps GET <see cref="Path"/> for <paramref name="registry"/> (HTTP listener only), admitted by <paramref name="gate"/>.</summary>
    public static void Map(WebApplication app, CollectorRegistry registry, HttpGate gate)
    {
        var endpoint = app.MapMetrics(Path, registry);
        Guard(endpoint, gate);
        GrpcServerHost.RequireHttpPort(endpoint, app);
    }

    /// <summary>
    /// A worker's scrape rule: over TLS a client certificate signed by the cluster CA (role client, e.g. DIR/client of
    /// `dtrain certs init`), as its gRPC port asks for certificates; with <paramref name="token"/> (Worker:MetricsToken)
    /// also "Authorization: Bearer TOKEN". A plaintext worker without a token (loopback, or --insecure) answers anyone.
    /// </summary>
    public static HttpGate WorkerGate(IServiceProvider services, string? token)
    {
        var mode = services.GetRequiredService<ServerMode>();
        return http => HttpAccess.RequireCertificate(http, mode, Path)
            ?? (string.IsNullOrWhiteSpace(token) || HttpAccess.HasBearer(http, token)
                ? null
                : new HttpRefusal(StatusCodes.Status401Unauthorized, $"{Path} needs \"Authorization: Bearer TOKEN\" with the worker's scrape token (Worker:MetricsToken)"));
    }

    /// <summary>Answers a request <paramref name="gate"/> refuses with its status and message (401 with a Bearer challenge).</summary>
    public static T Guard<T>(T endpoint, HttpGate gate) where T : IEndpointConventionBuilder
    {
        endpoint.Add(b =>
        {
            var inner = b.RequestDelegate;
            if (inner is null) return;
            b.RequestDelegate = http =>
            {
                if (gate(http) is not { } refusal) return inner(http);
                http.Response.StatusCode = refusal.Status;
                if (refusal.Status == StatusCodes.Status401Unauthorized) http.Response.Headers.WWWAuthenticate = "Bearer realm=\"dtrain metrics\"";
                http.Response.ContentType = "text/plain; charset=utf-8";
                return http.Response.WriteAsync(refusal.Message + "\n");
            };
        });
        return endpoint;
    }
}

/// <summary>Credentials on the HTTP/1.1 listener: a fixed bearer token, and the client certificate a TLS listener asks for.</summary>
public static class HttpAccess
{
    /// <summary>Whether the request carries "Authorization: Bearer <paramref name="token"/>" (compared in constant time).</summary>
    public static bool HasBearer(HttpContext http, string token)
    {
        var expected = Encoding.UTF8.GetBytes("Bearer " + token.Trim());
        var given = Encoding.UTF8.GetBytes(http.Request.Headers.Authorization.ToString());
        return CryptographicOperations.FixedTimeEquals(given, expected);
    }

    /// <summary>
    /// On a TLS server: a refusal unless the connection presented a client certificate the cluster CA signed, of role
    /// client (the gRPC port asks the same of the CLI); null on a plaintext server. <paramref name="what"/> names what is read.
    /// </summary>
    public static HttpRefusal? RequireCertificate(HttpContext http, ServerMode mode, string what)
    {
        if (mode.Security is not { } security) return null;
        var presented = http.Connection.ClientCertificate;
        if (presented is null)
            return new HttpRefusal(StatusCodes.Status401Unauthorized,
                $"{what} needs a client certificate signed by the cluster CA (role {ClusterRoles.Client}: tls.crt and tls.key of DIR/client from `dtrain certs init`; " +
                "Prometheus: tls_config cert_file and key_file), as the gRPC port does; none was presented");
        var identity = security.Tls.Identify(presented, asServer: false, out var error);
        if (identity is null) return new HttpRefusal(StatusCodes.Status401Unauthorized, $"{what} refused the client certificate \"{presented.Subject}\": {error}");
        if (identity.Role != ClusterRoles.Client)
            return new HttpRefusal(StatusCodes.Status403Forbidden, $"{what} refused {identity}: only a {ClusterRoles.Client} certificate (DIR/client of `dtrain certs init`) may read it");
        return null;
    }
}
