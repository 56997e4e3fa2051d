using System.Globalization;
using System.Net;
using System.Net.ServerSentEvents;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.StaticFiles;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Dtrain.Dashboard;

/// <summary>
/// The web dashboard on the coordinator's HTTP port (<see cref="CoordinatorOptions.HttpPort"/>): pages for the jobs,
/// one job (curves, spec, checkpoints, sample) and the workers, a read-only JSON API under /api, server-sent events
/// for live updates, and checkpoint downloads. Authentication is the CLI's: when Coordinator:Auth is on, every page and
/// API call needs a token — an HttpOnly, SameSite=Strict cookie set by the login form, or an "Authorization: Bearer"
/// header — checked by <see cref="TokenAuthenticator"/>, with the roles of the gRPC services (a submitter sees only
/// its own jobs; listing workers needs viewer or admin). Its files (plain HTML/JS/CSS and uPlot) are embedded in the
/// coordinator's assembly: nothing is fetched from elsewhere.
/// </summary>
public static class DashboardEndpoints
{
    public const string CookieName = "dtrain_token";
    const string ResourcePrefix = "dashboard/";

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

    /// <summary>The coordinator's parts the dashboard reads, resolved once per request.</summary>
    sealed record Parts(TokenAuthenticator Auth, JobManager Jobs, WorkerRegistry Registry, AuditLog Audit, TimeProvider Clock, IHostApplicationLifetime Lifetime, DashboardSamples Samples);

    static Parts Services(HttpContext http)
    {
        var s = http.RequestServices;
        return new(s.GetRequiredService<TokenAuthenticator>(), s.GetRequiredService<JobManager>(), s.GetRequiredService<WorkerRegistry>(),
            s.GetRequiredService<AuditLog>(), s.GetRequiredService<TimeProvider>(), s.GetRequiredService<IHostApplicationLifetime>(), s.GetRequiredService<DashboardSamples>());
    }

    /// <summary>A refusal with its HTTP status and message (JSON {"error": ...} on the API).</summary>
    sealed class Refusal(int status, string message) : Exception(message)
    {
        public int Status { get; } = status;
    }

    static string Peer(HttpContext http) => http.Connection.RemoteIpAddress is { } ip
        ? $"{(ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4")}:{ip}:{http.Connection.RemotePort}"
        : "unknown";

    /// <summary>The caller of a request: its Authorization header, else the login cookie; a <see cref="Refusal"/> (401) when auth is on and neither holds a valid token.</summary>
    static Caller Authenticate(HttpContext http)
    {
        var header = http.Request.Headers.Authorization.ToString();
        var carrier = "header";
        if (header.Length == 0 && http.Request.Cookies.TryGetValue(CookieName, out var cookie) && cookie.Length > 0)
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

    static bool MayListWorkers(Caller caller) => caller.Role is Role.Viewer or Role.Admin;

    static void RequireWorkers(Caller caller)
    {
        if (!MayListWorkers(caller))
            throw new Refusal(StatusCodes.Status403Forbidden, $"token {caller.TokenId} (\"{caller.Name}\") has role {caller.Role.Name()}, which may not list the workers; that needs viewer or admin");
    }

    static IEnumerable<JobRecord> Visible(HttpContext http, Caller caller) => Services(http).Jobs.List().Where(caller.CanSee);

    /// <summary>The job if the caller may see it; 404 with the message of a job that does not exist otherwise (as <see cref="JobAccess"/>), audited.</summary>
    static JobRecord Job(HttpContext http, Caller caller, string id, string action)
    {
        var parts = Services(http);
        if (!parts.Jobs.Knows(id)) throw new Refusal(StatusCodes.Status404NotFound, JobAccess.NotFoundMessage(id));
        var job = parts.Jobs.Get(id);
        if (caller.CanSee(job)) return job;
        parts.Audit.Write("job.denied", caller, Peer(http), ("job", id), ("owner", job.Owner), ("action", "dashboard " + action));
        throw new Refusal(StatusCodes.Status404NotFound, JobAccess.NotFoundMessage(id));
    }

    static IResult Error(Refusal r)
    {
        var body = new JsonObject { ["error"] = r.Message }.ToJsonString();
        return r.Status == StatusCodes.Status401Unauthorized
            ? new Unauthorized(body)
            : Results.Text(body, "application/json", Encoding.UTF8, r.Status);
    }

    /// <summary>401 with a WWW-Authenticate challenge, as RFC 6750 asks of a bearer-token API.</summary>
    sealed class Unauthorized(string body) : IResult
    {
        public Task ExecuteAsync(HttpContext http)
        {
            http.Response.StatusCode = StatusCodes.Status401Unauthorized;
            http.Response.Headers.WWWAuthenticate = "Bearer realm=\"dtrain\"";
            http.Response.ContentType = "application/json; charset=utf-8";
            return http.Response.WriteAsync(body);
        }
    }

    static IResult Api(HttpContext http, Func<Caller, JsonNode> body)
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

    // ---- pages ----

    static IResult Page(HttpContext http)
    {
        try
        {
            Authenticate(http);
        }
        catch (Refusal r) when (r.Status == StatusCodes.Status401Unauthorized)
        {
            var next = http.Request.Path + http.Request.QueryString;
            return Results.Redirect("/login?next=" + Uri.EscapeDataString(next));
        }
        catch (Refusal r)
        {
            return Results.Text(WebUtility.HtmlEncode(r.Message), "text/plain", Encoding.UTF8, r.Status);
        }
        http.Response.Headers.CacheControl = "no-store";
        return Results.Text(Resource("index.html")!, "text/html", Encoding.UTF8);
    }

    static IResult LoginPage(HttpContext http, string? error, int status)
    {
        var auth = Services(http).Auth.Current();
        var note = auth.Required
            ? "This coordinator requires a token (" + WebUtility.HtmlEncode(auth.Why) + "). Paste one made with <code>dtrain tokens create</code>; it is kept in an HttpOnly cookie for this browser session."
            : "Auth is off on this coordinator (" + WebUtility.HtmlEncode(auth.Why) + "): no token is needed.";
        var html = Resource("login.html")!
            .Replace("{{note}}", note, StringComparison.Ordinal)
            .Replace("{{error}}", error is null ? "" : $"<p class=\"error\" id=\"login-error\">{WebUtility.HtmlEncode(error)}</p>", StringComparison.Ordinal)
            .Replace("{{next}}", WebUtility.HtmlEncode(SafeNext(http.Request.Query["next"].ToString())), StringComparison.Ordinal);
        return Results.Text(html, "text/html", Encoding.UTF8, status);
    }

    /// <summary>
    /// Only a path on this site (no scheme, no "//host"): the login form must not redirect elsewhere. Browsers drop tabs
    /// and newlines from a URL and read a backslash as a slash (so "/\t/evil.example" is "//evil.example"): a path with
    /// a control character, a space or a backslash anywhere is not taken.
    /// </summary>
    internal static string SafeNext(string? next) =>
        next is { Length: > 0 } n && n[0] == '/' && !n.StartsWith("//", StringComparison.Ordinal)
            && n.All(c => c > ' ' && c < 0x7f && c != '\\') ? n : "/";

    static async Task<IResult> Login(HttpContext http)
    {
        // The listener has no body limit of its own (gRPC streams need none): a login form is small, anything larger is refused.
        var tooLarge = $"the login form is at most {MaxLoginBytes / 1024} KiB (a token and the page to go back to)";
        if (http.Request.ContentLength is > MaxLoginBytes and var length)
            return LoginPage(http, $"request body of {length} bytes refused: {tooLarge}", StatusCodes.Status413PayloadTooLarge);
        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit) limit.MaxRequestBodySize = MaxLoginBytes;
        IFormCollection form;
        try
        {
            form = await http.Request.ReadFormAsync(http.RequestAborted).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            return LoginPage(http, $"request body refused: {tooLarge}", StatusCodes.Status413PayloadTooLarge);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or BadHttpRequestException or IOException)
        {
            return LoginPage(http, $"malformed login form: {e.Message}", StatusCodes.Status400BadRequest);
        }
        var token = form["token"].ToString().Trim();
        var next = SafeNext(form["next"].ToString());
        try
        {
            Services(http).Auth.Authenticate(token.Length == 0 ? null : "Bearer " + token, Peer(http), "dashboard login", "form field");
        }
        catch (AccessDeniedException e)
        {
            return LoginPage(http, e.Message, StatusCodes.Status401Unauthorized);
        }
        http.Response.Cookies.Append(CookieName, token, new CookieOptions
        {
            HttpOnly = true,
            SameSite = SameSiteMode.Strict,
            Secure = http.Request.IsHttps,
            Path = "/",
            IsEssential = true,
        });
        return Results.Redirect(next);
    }

    static IResult Logout(HttpContext http)
    {
        http.Response.Cookies.Delete(CookieName, new CookieOptions { Path = "/", SameSite = SameSiteMode.Strict, Secure = http.Request.IsHttps, HttpOnly = true });
        return Results.Redirect("/login");
    }

    static readonly FileExtensionContentTypeProvider ContentTypes = new();

    /// <summary>The page's own scripts and styles and the vendored uPlot; public (they hold no data).</summary>
    static IResult Static(string path)
    {
        if (path.Contains("..", StringComparison.Ordinal)) return Results.NotFound();
        var stream = typeof(DashboardEndpoints).Assembly.GetManifestResourceStream(ResourcePrefix + path);
        if (stream is null) return Results.NotFound();
        if (!ContentTypes.TryGetContentType(path, out var type)) type = "application/octet-stream";
        return Results.Stream(stream, type);
    }

    /// <summary>An embedded file's text (index.html, login.html).</summary>
    static string? Resource(string name)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(ResourcePrefix + name);
        if (stream is null) return null;
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    // ---- JSON ----

    static string State(JobState s) => s.ToString().ToLowerInvariant();

    /// <summary>A job as the API shows it; eta_seconds from its progress since it started (null when unknown).</summary>
    public static JsonObject JobJson(JobInfo i, DateTimeOffset now)
    {
        double? eta = null;
        var done = i.Step - i.StartStep;
        if (i.State is JobState.Running or JobState.Waiting && i.StartedUnixMs > 0 && done > 0 && i.TotalSteps > i.Step)
            eta = (now.ToUnixTimeMilliseconds() - i.StartedUnixMs) / 1000.0 / done * (i.TotalSteps - i.Step);
        var o = new JsonObject
        {
            ["id"] = i.JobId,
            ["name"] = i.Name,
            ["task"] = i.Task,
            ["state"] = State(i.State),
            ["message"] = i.Message,
            ["owner"] = i.Owner,
            ["stored_bytes"] = i.StoredBytes,
            ["step"] = i.Step,
            ["total_steps"] = i.TotalSteps,
            ["progress"] = i.TotalSteps > 0 ? Math.Min(1.0, (double)i.Step / i.TotalSteps) : 0.0,
            ["eta_seconds"] = eta,
            ["epoch"] = i.Epoch + 1,
            ["loss"] = Finite(i.Loss),
            ["samples_per_second"] = Finite(i.SamplesPerSecond),
            ["workers"] = new JsonArray([.. i.WorkerIds.Select(w => (JsonNode)JsonValue.Create(w))]),
            ["workers_requested"] = i.WorkersRequested,
            ["parameters"] = i.Parameters,
            ["submitted_unix_ms"] = i.SubmittedUnixMs,
            ["started_unix_ms"] = i.StartedUnixMs,
            ["finished_unix_ms"] = i.FinishedUnixMs,
            ["generation"] = i.Generation,
            ["restarts"] = i.Restarts,
            ["resumed_from"] = i.ResumedFrom,
            ["has_checkpoint"] = i.Checkpoint.Length > 0,
        };
        if (i.LastEval is { } m) o["last_eval"] = MetricsJson(m);
        return o;
    }

    static JsonObject MetricsJson(Metrics m)
    {
        var o = new JsonObject { ["loss"] = Finite(m.Loss), ["count"] = m.Count };
        if (m.HasAccuracy) o["accuracy"] = Finite(m.Accuracy);
        if (m.HasMacroF1) o["macro_f1"] = Finite(m.MacroF1);
        if (m.HasPerplexity) o["perplexity"] = Finite(m.Perplexity);
        if (m.HasBitsPerToken) o["bits_per_token"] = Finite(m.BitsPerToken);
        return o;
    }

    static double? Finite(double x) => double.IsFinite(x) ? x : null;

    static JsonNode RowJson(MetricsRow r)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer)) MetricsTable.WriteJson(r, json);
        return JsonNode.Parse(buffer.ToArray())!;
    }

    static JsonObject JobDetail(HttpContext http, JobRecord job)
    {
        var o = JobJson(job.ToProto(), Services(http).Clock.GetUtcNow());
        // As submitted: the data as the user named it, no path on this coordinator.
        o["spec"] = JsonNode.Parse(JobSpecSerializer.Serialize(job.SpecAsSubmitted));
        var dir = Path.Combine(job.Dir, "checkpoints");
        var files = Directory.Exists(dir) ? new DirectoryInfo(dir).GetFiles("ckpt-*.dtck").OrderBy(f => f.Name, StringComparer.Ordinal) : Enumerable.Empty<FileInfo>();
        o["checkpoints"] = new JsonArray([.. files.Select(f => (JsonNode)new JsonObject
        {
            ["name"] = f.Name,
            ["step"] = long.TryParse(f.Name.AsSpan(5, f.Name.Length - 10), NumberStyles.None, CultureInfo.InvariantCulture, out var step) ? step : null,
            ["bytes"] = f.Length,
            ["modified_unix_ms"] = new DateTimeOffset(f.LastWriteTimeUtc).ToUnixTimeMilliseconds(),
            ["url"] = $"/api/jobs/{Uri.EscapeDataString(job.Id)}/checkpoints/{Uri.EscapeDataString(f.Name)}",
        })]);
        o["language_model"] = job.Spec.Task == TaskKinds.LanguageModel;
        return o;
    }

    static JsonArray WorkersJson(HttpContext http)
    {
        var parts = Services(http);
        parts.Registry.Sweep();
        var now = parts.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        return new JsonArray([.. parts.Registry.Snapshot().Select(w => (JsonNode)WorkerJson(w.ToInfo(), now))]);
    }

    static JsonObject WorkerJson(WorkerInfo w, long now) => new()
    {
        ["id"] = w.WorkerId,
        ["name"] = w.Name,
        ["address"] = w.Address,
        ["state"] = w.State.ToString().ToLowerInvariant(),
        ["job"] = w.JobId,
        // The worker's live phase from its last heartbeat (forward, all-reduce reduce-scatter piece k/n waiting on wN, ...).
        ["phase"] = w.Activity is { Phase.Length: > 0 } a ? Distributed.WorkerActivity.Describe(a.Phase, a.Detail, a.WaitingOn) : "",
        ["step"] = w.Activity?.Step ?? 0,
        ["in_phase_seconds"] = w.Activity is { } p ? p.InPhaseMs / 1000.0 : 0,
        ["last_heartbeat_unix_ms"] = w.LastHeartbeatUnixMs,
        ["heartbeat_age_seconds"] = Math.Max(0, now - w.LastHeartbeatUnixMs) / 1000.0,
        ["cores"] = w.Cores,
        ["device"] = w.Device,
        ["memory_bytes"] = w.MemoryBytes,
        ["threads"] = w.Threads,
        ["cordoned"] = w.Cordoned,
        ["message"] = w.Message,
    };

    // ---- downloads ----

    static IResult MetricsCsv(HttpContext http, string id)
    {
        try
        {
            var job = Job(http, Authenticate(http), id, "metrics");
            var csv = MetricsTable.Csv(MetricsTable.Rows(job.History().Select(ProtoMapper.EventOf)));
            return Results.File(Encoding.UTF8.GetBytes(csv), "text/csv", $"{job.Id}-metrics.csv");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }

    static IResult Checkpoint(HttpContext http, string id, string name)
    {
        try
        {
            var caller = Authenticate(http);
            var job = Job(http, caller, id, "download");
            // Only a checkpoint file of the job's own directory, by its plain name.
            if (name != Path.GetFileName(name) || !name.StartsWith("ckpt-", StringComparison.Ordinal) || !name.EndsWith(".dtck", StringComparison.Ordinal))
                throw new Refusal(StatusCodes.Status404NotFound, $"job {id} has no checkpoint \"{name}\"");
            var path = Path.Combine(job.Dir, "checkpoints", name);
            if (!File.Exists(path)) throw new Refusal(StatusCodes.Status404NotFound, $"job {id} has no checkpoint \"{name}\" (older ones are removed per training.keep_checkpoints)");
            Services(http).Audit.Write("job.download", caller, Peer(http), ("job", job.Id), ("owner", job.Owner), ("checkpoint", path), ("via", "dashboard"));
            return Results.File(path, "application/octet-stream", $"{job.Id}-{name}");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }

    static async Task<IResult> Sample(HttpContext http, string id)
    {
        try
        {
            var job = Job(http, Authenticate(http), id, "sample");
            if (job.Spec.Task != TaskKinds.LanguageModel) throw new Refusal(StatusCodes.Status404NotFound, $"job {id} is not a language model (task {job.Spec.Task})");
            var checkpoint = job.Progress.Checkpoint;
            if (checkpoint.Length == 0 || !File.Exists(checkpoint)) return Results.Text(new JsonObject { ["text"] = null, ["note"] = "no checkpoint yet" }.ToJsonString(), "application/json");
            var sample = await Services(http).Samples.GetAsync(checkpoint).ConfigureAwait(false);
            return Results.Text(new JsonObject { ["text"] = sample.Text, ["checkpoint"] = Path.GetFileName(checkpoint), ["step"] = sample.Step, ["settings"] = DashboardSamples.Settings }.ToJsonString(), "application/json");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }

    // ---- live ----

    /// <summary>
    /// Ends a server-sent event stream when the browser goes, the coordinator stops (an open stream must not hold shutdown
    /// up), or the caller's token is revoked (the page then asks to log in again).
    /// </summary>
    sealed class StreamEnd : IDisposable
    {
        private readonly CancellationTokenSource cancel;
        private readonly TokenAuthenticator.OpenStream? held;

        public StreamEnd(HttpContext http, Caller caller)
        {
            held = caller.Authenticated ? Services(http).Auth.Hold(caller, $"dashboard {http.Request.Method} {http.Request.Path}", Peer(http)) : null;
            cancel = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted, Services(http).Lifetime.ApplicationStopping, held?.Ended ?? CancellationToken.None);
        }

        public CancellationToken Token => cancel.Token;
        public bool IsCancellationRequested => cancel.IsCancellationRequested;

        public void Dispose()
        {
            cancel.Dispose();
            held?.Dispose();
        }
    }

    static StreamEnd StreamCancel(HttpContext http, Caller caller) => new(http, caller);

    /// <summary>
    /// A job's events as server-sent events, from the same source as the Watch RPC: the events so far, then live ones —
    /// "step" (a metrics row), "eval" (a row with validation metrics), "state" (the job as it is now, also when replayed),
    /// "log" (a line) — and "end" when the job has finished.
    /// </summary>
    static IResult JobEvents(HttpContext http, string id)
    {
        JobRecord job;
        Caller caller;
        try
        {
            caller = Authenticate(http);
            job = Job(http, caller, id, "watch");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
        http.Response.Headers.CacheControl = "no-store";
        return TypedResults.ServerSentEvents(JobEventStream(http, job, caller));
    }

    static async IAsyncEnumerable<SseItem<string>> JobEventStream(HttpContext http, JobRecord job, Caller caller)
    {
        using var cancel = StreamCancel(http, caller);
        var reader = job.Watch();
        var now = Services(http).Clock;
        try
        {
            while (true)
            {
                JobEvent e;
                try
                {
                    if (!await reader.WaitToReadAsync(cancel.Token).ConfigureAwait(false)) break;
                    if (!reader.TryRead(out var notice)) continue;
                    e = job.ToProto(notice);
                }
                catch (OperationCanceledException)
                {
                    yield break;
                }
                yield return e.KindCase switch
                {
                    // The job as it is now, not the snapshot the notice kept: the events so far are replayed first, and
                    // a replayed state (step 0 when the job started) would take the page back behind the detail it just drew.
                    JobEvent.KindOneofCase.State => new SseItem<string>(JobJson(job.ToProto(), now.GetUtcNow()).ToJsonString(), "state"),
                    JobEvent.KindOneofCase.Step or JobEvent.KindOneofCase.Eval => new SseItem<string>(RowJson(MetricsTable.Rows([e])[0]).ToJsonString(), e.KindCase == JobEvent.KindOneofCase.Step ? "step" : "eval"),
                    _ => new SseItem<string>(new JsonObject { ["text"] = e.Log }.ToJsonString(), "log"),
                };
            }
            yield return new SseItem<string>(JobJson(job.ToProto(), now.GetUtcNow()).ToJsonString(), "end");
        }
        finally
        {
            job.Unwatch(reader);
        }
    }

    /// <summary>The jobs list (and the workers, for roles that may list them) as server-sent events whenever they change, checked every second.</summary>
    static IResult ClusterStream(HttpContext http)
    {
        Caller caller;
        try
        {
            caller = Authenticate(http);
        }
        catch (Refusal r)
        {
            return Error(r);
        }
        http.Response.Headers.CacheControl = "no-store";
        return TypedResults.ServerSentEvents(ClusterEvents(http, caller));
    }

    static async IAsyncEnumerable<SseItem<string>> ClusterEvents(HttpContext http, Caller caller)
    {
        using var cancel = StreamCancel(http, caller);
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        string? lastJobs = null, lastWorkers = null;
        var parts = Services(http);
        while (!cancel.IsCancellationRequested)
        {
            var now = parts.Clock.GetUtcNow();
            var jobs = new JsonArray([.. Visible(http, caller).Select(j => (JsonNode)JobJson(j.ToProto(), now))]).ToJsonString();
            if (jobs != lastJobs) yield return new SseItem<string>(lastJobs = jobs, "jobs");
            if (MayListWorkers(caller))
            {
                var workers = WorkersJson(http).ToJsonString();
                if (workers != lastWorkers) yield return new SseItem<string>(lastWorkers = workers, "workers");
            }
            try
            {
                if (!await timer.WaitForNextTickAsync(cancel.Token).ConfigureAwait(false)) yield break;
            }
            catch (OperationCanceledException)
            {
                yield break;
            }
        }
    }

    /// <summary>Adds what the dashboard needs to the coordinator's services.</summary>
    public static void AddDashboard(this IServiceCollection services) => services.AddSingleton<DashboardSamples>();

    /// <summary>The dashboard's URL for a browser on this machine, or null when the HTTP port is off.</summary>
    public static string? Url(WebApplication app) => GrpcServerHost.HttpAddress(app) is { } a ? a + "/" : null;
}
