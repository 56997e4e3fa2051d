using System.Text.Json.Nodes;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using static Dtrain.Dashboard.DashboardAccess;
using static Dtrain.Dashboard.DashboardDownloads;
using static Dtrain.Dashboard.DashboardJson;
using static Dtrain.Dashboard.DashboardPages;
using static Dtrain.Dashboard.DashboardStreams;

namespace Dtrain.Dashboard;

/// <summary>
/// The web dashboard on the coordinator's HTTP port (<see cref="CoordinatorOptions.HttpPort"/>): pages for the jobs,
/// one job (curves, spec, checkpoints, sample) and the workers, a read-only JSON API under /api, server-sent events
/// for live updates, and checkpoint downloads. Authentication is the CLI's: when Coordinator:Auth is on, every page and
/// API call needs a token — an HttpOnly, SameSite=Strict cookie set by the login form, or an "Authorization: Bearer"
/// header — checked by <see cref="TokenAuthenticator"/>, with the roles of the gRPC services (a submitter sees only
/// its own jobs; listing workers needs viewer or admin). Its files (plain HTML/JS/CSS and uPlot) are embedded in the
/// coordinator's assembly: nothing is fetched from elsewhere. This maps the routes; the pages, the JSON, the downloads
/// and the live streams are each in a file of their own (<see cref="DashboardPages"/>, <see cref="DashboardJson"/>,
/// <see cref="DashboardDownloads"/>, <see cref="DashboardStreams"/>), who may see what in <see cref="DashboardAccess"/>.
/// </summary>
public static class DashboardEndpoints
{
    public const string CookieName = "dtrain_token";

    /// <summary>The largest login form accepted (a token is 47 characters; the form adds the next page's path).</summary>
    public const int MaxLoginBytes = 16 * 1024;

    /// <summary>
    /// Sent with every answer of the HTTP listener: the pages load scripts, styles and data only from this site, with no
    /// inline script or style (dashboard.js sets styles through the CSSOM), and may not be framed by another site.
    /// </summary>
    public const string ContentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; " +
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

    /// <summary>Maps the pages, /api and /static on the HTTP listener only.</summary>
    public static void Map(WebApplication app)
    {
        var endpoints = app.Services.GetRequiredService<ServerEndpoints>();
        app.Use((http, next) =>
        {
            if (endpoints.Http?.IPEndPoint is { } ep && http.Connection.LocalPort == ep.Port)
            {
                var headers = http.Response.Headers;
                headers.ContentSecurityPolicy = ContentSecurityPolicy;
                headers.XFrameOptions = "DENY";
                headers.XContentTypeOptions = "nosniff";
                headers["Referrer-Policy"] = "no-referrer";
            }
            return next(http);
        });
        void Get(string pattern, Delegate handler) => GrpcServerHost.RequireHttpPort(app.MapGet(pattern, handler), app);
        void Post(string pattern, Delegate handler) => GrpcServerHost.RequireHttpPort(app.MapPost(pattern, handler), app);

        Get("/", Page);
        Get("/jobs/{id}", Page);
        Get("/workers", Page);
        Get("/login", (HttpContext http) => LoginPage(http, null, StatusCodes.Status200OK));
        Post("/login", Login);
        Post("/logout", Logout);
        Get("/static/{**path}", Static);

        Get("/api/auth", (HttpContext http) => Api(http, caller => new JsonObject
        {
            ["required"] = Services(http).Auth.Current().Required,
            ["name"] = caller.Name,
            ["role"] = caller.Role.Name(),
            ["may_list_workers"] = MayListWorkers(caller),
        }));
        Get("/api/jobs", (HttpContext http) => Api(http, caller =>
            new JsonArray([.. Visible(http, caller).Select(j => (JsonNode)JobJson(j.ToProto(), Services(http).Clock.GetUtcNow()))])));
        Get("/api/storage", (HttpContext http) => Api(http, caller => new JsonArray([.. Services(http).Jobs.StorageOf(Visible(http, caller)).Select(s => (JsonNode)new JsonObject
        {
            ["owner"] = s.Owner,
            ["stored_bytes"] = s.Bytes,
            ["quota_bytes"] = s.Quota,
        })])));
        Get("/api/jobs/{id}", (HttpContext http, string id) => Api(http, caller => JobDetail(http, Job(http, caller, id, "get"))));
        Get("/api/jobs/{id}/history", (HttpContext http, string id) => Api(http, caller =>
        {
            var job = Job(http, caller, id, "history");
            var rows = MetricsTable.Rows(job.History().Select(ProtoMapper.EventOf));
            return new JsonObject { ["job"] = JobJson(job.ToProto(), Services(http).Clock.GetUtcNow()), ["rows"] = new JsonArray([.. rows.Select(RowJson)]) };
        }));
        Get("/api/jobs/{id}/metrics.csv", MetricsCsv);
        Get("/api/jobs/{id}/events", JobEvents);
        Get("/api/jobs/{id}/checkpoints/{name}", Checkpoint);
        Get("/api/jobs/{id}/sample", Sample);
        Get("/api/workers", (HttpContext http) => Api(http, caller =>
        {
            RequireWorkers(caller);
            return WorkersJson(http);
        }));
        Get("/api/stream", ClusterStream);
    }

    /// <summary>Adds what the dashboard needs to the coordinator's services.</summary>
    public static void AddDashboard(this IServiceCollection services) => services.AddSingleton<DashboardSamples>();

    /// <summary>The dashboard's URL for a browser on this machine, or null when the HTTP port is off.</summary>
    public static string? Url(WebApplication app) => GrpcServerHost.HttpAddress(app) is { } a ? a + "/" : null;
}
