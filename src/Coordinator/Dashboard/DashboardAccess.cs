using System.Text;
using System.Text.Json.Nodes;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Dtrain.Dashboard;

/// <summary>
/// Who may see what on the dashboard: the caller of a request (its bearer token or login cookie, checked by
/// <see cref="TokenAuthenticator"/> as the gRPC services check theirs), the jobs and workers it may see, and refusals
/// as HTTP answers.
/// </summary>
internal static class DashboardAccess
{
    /// <summary>The coordinator's parts the dashboard reads, resolved once per request.</summary>
    internal sealed record Parts(TokenAuthenticator Auth, JobManager Jobs, WorkerRegistry Registry, AuditLog Audit, TimeProvider Clock, IHostApplicationLifetime Lifetime, DashboardSamples Samples);

    internal static Parts Services(HttpContext http)
    {
        var s = http.RequestServices;
        return new(s.GetRequiredService<TokenAuthenticator>(), s.GetRequiredService<JobManager>(), s.GetRequiredService<WorkerRegistry>(),
            s.GetRequiredService<AuditLog>(), s.GetRequiredService<TimeProvider>(), s.GetRequiredService<IHostApplicationLifetime>(), s.GetRequiredService<DashboardSamples>());
    }

    /// <summary>A refusal with its HTTP status and message (JSON {"error": ...} on the API).</summary>
    internal sealed class Refusal(int status, string message) : Exception(message)
    {
        public int Status { get; } = status;
    }

    internal static string Peer(HttpContext http) => http.Connection.RemoteIpAddress is { } ip
        ? $"{(ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4")}:{ip}:{http.Connection.RemotePort}"
        : "unknown";

    /// <summary>The caller of a request: its Authorization header, else the login cookie; a <see cref="Refusal"/> (401) when auth is on and neither holds a valid token.</summary>
    internal static Caller Authenticate(HttpContext http)
    {
        var header = http.Request.Headers.Authorization.ToString();
        var carrier = "header";
        if (header.Length == 0 && http.Request.Cookies.TryGetValue(DashboardEndpoints.CookieName, out var cookie) && cookie.Length > 0)
        {
            header = "Bearer " + cookie;
            carrier = "cookie";
        }
        Caller caller;
        try
        {
            caller = Services(http).Auth.Authenticate(header.Length == 0 ? null : header, Peer(http), $"dashboard {http.Request.Method} {http.Request.Path}", carrier);
        }
        catch (AccessDeniedException e)
        {
            throw new Refusal(Refusals.HttpStatusOf(e.Kind), e.Message);
        }
        if (caller.Role == Role.Metrics)
            throw new Refusal(StatusCodes.Status403Forbidden, $"token {caller.TokenId} (\"{caller.Name}\") has role metrics, which may only read /metrics and /metrics/targets; the dashboard needs submitter, viewer or admin");
        // With auth off the gRPC port still asks a TLS client for its certificate, and so does the dashboard then: a
        // token is the credential when auth is on (browsers have no certificate), the certificate when it is off.
        if (!caller.Authenticated && HttpAccess.RequireCertificate(http, http.RequestServices.GetRequiredService<ServerMode>(), "the dashboard (Coordinator:Auth=off)") is { } refusal)
            throw new Refusal(StatusCodes.Status403Forbidden, refusal.Message);
        return caller;
    }

    internal static bool MayListWorkers(Caller caller) => caller.Role is Role.Viewer or Role.Admin;

    internal static void RequireWorkers(Caller caller)
    {
        if (!MayListWorkers(caller))
            throw new Refusal(StatusCodes.Status403Forbidden, $"token {caller.TokenId} (\"{caller.Name}\") has role {caller.Role.Name()}, which may not list the workers; that needs viewer or admin");
    }

    internal static IEnumerable<JobRecord> Visible(HttpContext http, Caller caller) => Services(http).Jobs.List().Where(caller.CanSee);

    /// <summary>The job if the caller may see it; 404 with the message of a job that does not exist otherwise (as <see cref="JobAccess"/>), audited.</summary>
    internal static JobRecord Job(HttpContext http, Caller caller, string id, string action)
    {
        var parts = Services(http);
        if (!parts.Jobs.Knows(id)) throw new Refusal(StatusCodes.Status404NotFound, JobAccess.NotFoundMessage(id));
        var job = parts.Jobs.Get(id);
        if (caller.CanSee(job)) return job;
        parts.Audit.Write("job.denied", caller, Peer(http), ("job", id), ("owner", job.Owner), ("action", "dashboard " + action));
        throw new Refusal(StatusCodes.Status404NotFound, JobAccess.NotFoundMessage(id));
    }

    internal static IResult Error(Refusal r)
    {
        var body = new JsonObject { ["error"] = r.Message }.ToJsonString();
        return r.Status == StatusCodes.Status401Unauthorized
            ? new Unauthorized(body)
            : Results.Text(body, "application/json", Encoding.UTF8, r.Status);
    }

    /// <summary>401 with a WWW-Authenticate challenge, as RFC 6750 asks of a bearer-token API.</summary>
    internal sealed class Unauthorized(string body) : IResult
    {
        public Task ExecuteAsync(HttpContext http)
        {
            http.Response.StatusCode = StatusCodes.Status401Unauthorized;
            http.Response.Headers.WWWAuthenticate = "Bearer realm=\"dtrain\"";
            http.Response.ContentType = "application/json; charset=utf-8";
            return http.Response.WriteAsync(body);
        }
    }

    internal static IResult Api(HttpContext http, Func<Caller, JsonNode> body)
    {
        try
        {
            var json = body(Authenticate(http));
            http.Response.Headers.CacheControl = "no-store";
            return Results.Text(json.ToJsonString(), "application/json", Encoding.UTF8);
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }
}
