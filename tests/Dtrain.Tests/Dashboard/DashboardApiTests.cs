using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Security;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Dashboard;

/// <summary>
/// The dashboard's HTTP side over a real coordinator and workers (Kestrel on loopback, auth on with tokens): the
/// login page and 401s without a token, the CLI's roles (a submitter sees only its jobs, workers need viewer or admin),
/// the login cookie, the JSON API, the event stream and checkpoint downloads.
/// </summary>
public class DashboardApiTests
{
    static readonly CoordinatorOptions WithDashboard = new() { HttpPort = 0 };

    static HttpClient Http(string baseAddress, string? token = null)
    {
        var http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = false }) { BaseAddress = new Uri(baseAddress), Timeout = TimeSpan.FromMinutes(2) };
        if (token is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return http;
    }

    static async Task<JsonElement> Json(HttpClient http, string path)
    {
        var reply = await http.GetAsync(path);
        var body = await reply.Content.ReadAsStringAsync();
        Assert.True(reply.IsSuccessStatusCode, $"GET {path}: {(int)reply.StatusCode} {body}");
        return JsonDocument.Parse(body).RootElement.Clone();
    }

    [Fact]
    public async Task Without_a_token_pages_redirect_to_the_login_page_and_the_api_answers_401_while_the_static_files_are_served()
    {
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard);
        Assert.NotNull(cluster.HttpAddress);
        using var http = Http(cluster.HttpAddress!);

        var page = await http.GetAsync("/jobs/job-0001");
        Assert.Equal(HttpStatusCode.Redirect, page.StatusCode);
        Assert.Equal("/login?next=%2Fjobs%2Fjob-0001", page.Headers.Location!.OriginalString);
        var login = await http.GetStringAsync("/login?next=%2Fjobs%2Fjob-0001");
        Assert.Contains("name=\"token\"", login, StringComparison.Ordinal);
        Assert.Contains("value=\"/jobs/job-0001\"", login, StringComparison.Ordinal);

        foreach (var path in new[] { "/api/jobs", "/api/workers", "/api/jobs/job-0001/history", "/api/jobs/job-0001/events", "/api/stream" })
        {
            var reply = await http.GetAsync(path);
            Assert.True(reply.StatusCode == HttpStatusCode.Unauthorized, $"{path}: {reply.StatusCode}");
            Assert.Equal("Bearer", reply.Headers.WwwAuthenticate.Single().Scheme);
            Assert.Contains("requires a bearer token", await reply.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        using (var wrong = Http(cluster.HttpAddress!, "not-a-token"))
            Assert.Equal(HttpStatusCode.Unauthorized, (await wrong.GetAsync("/api/jobs")).StatusCode);

        // The chart library and the page's own script are part of the coordinator, with uPlot's licence.
        var uplot = await http.GetAsync("/static/vendor/uplot/uPlot.iife.min.js");
        Assert.Equal(HttpStatusCode.OK, uplot.StatusCode);
        Assert.Equal("text/javascript", uplot.Content.Headers.ContentType!.MediaType);
        Assert.Contains("uPlot", await uplot.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Contains("MIT License", await http.GetStringAsync("/static/vendor/uplot/LICENSE"), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/static/dashboard.js")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync("/static/../dtrain.dll")).StatusCode);

        // The dashboard is not on the gRPC port.
        using var grpcPort = new HttpClient();
        using var h2 = new HttpRequestMessage(HttpMethod.Get, cluster.Address + "/api/jobs") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
        Assert.Equal(HttpStatusCode.NotFound, (await grpcPort.SendAsync(h2)).StatusCode);
    }

    [Fact]
    public async Task The_login_form_sets_an_http_only_same_site_strict_cookie_that_opens_the_pages_and_redirects_only_within_the_site()
    {
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard);
        using var http = Http(cluster.HttpAddress!);

        var refused = await http.PostAsync("/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = "wrong", ["next"] = "/workers" }));
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        Assert.Contains("unknown token", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.False(refused.Headers.Contains("Set-Cookie"));

        var reply = await http.PostAsync("/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = cluster.AdminToken!, ["next"] = "/workers" }));
        Assert.Equal(HttpStatusCode.Redirect, reply.StatusCode);
        Assert.Equal("/workers", reply.Headers.Location!.OriginalString);
        var cookie = Assert.Single(reply.Headers.GetValues("Set-Cookie"));
        Assert.StartsWith("dtrain_token=", cookie, StringComparison.Ordinal);
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);

        using var withCookie = new HttpRequestMessage(HttpMethod.Get, "/api/workers");
        withCookie.Headers.Add("Cookie", cookie.Split(';')[0]);
        var workers = await http.SendAsync(withCookie);
        Assert.Equal(HttpStatusCode.OK, workers.StatusCode);
        Assert.Single(JsonDocument.Parse(await workers.Content.ReadAsStringAsync()).RootElement.EnumerateArray());
        using var pageWithCookie = new HttpRequestMessage(HttpMethod.Get, "/workers");
        pageWithCookie.Headers.Add("Cookie", cookie.Split(';')[0]);
        Assert.Contains("dashboard.js", await (await http.SendAsync(pageWithCookie)).Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // "next" must be a path of this site: anything else goes to the jobs page.
        // Browsers drop tabs and newlines in a URL and read a backslash as '/': "/\t/evil.example" would be "//evil.example".
        foreach (var next in new[] { "//evil.example/x", "https://evil.example/", "/\\evil.example", "/\t/evil.example", "/\n/evil.example", "/ /evil.example", "/x\\..\\\\evil.example" })
        {
            var r = await http.PostAsync("/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = cluster.AdminToken!, ["next"] = next }));
            Assert.Equal("/", r.Headers.Location!.OriginalString);
        }
    }

    [Fact]
    public async Task A_submitter_sees_only_its_own_jobs_everywhere_and_not_the_workers_a_viewer_sees_everything()
    {
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard);
        using var tmp = new TempDir();
        var alice = AuthTestSupport.Token(cluster, "alice", Role.Submitter);
        var bob = AuthTestSupport.Token(cluster, "bob", Role.Submitter);
        var viewer = AuthTestSupport.Token(cluster, "vera", Role.Viewer);
        var aliceJob = AuthTestSupport.SubmitLm(alice.Client, tmp, "alice-lm", steps: 10);
        var bobJob = AuthTestSupport.SubmitLm(bob.Client, tmp, "bob-lm", steps: 10);
        await cluster.WaitAsync(aliceJob, TimeSpan.FromMinutes(3));
        await cluster.WaitAsync(bobJob, TimeSpan.FromMinutes(3));

        using var asAlice = Http(cluster.HttpAddress!, alice.Token);
        var jobs = await Json(asAlice, "/api/jobs");
        Assert.Equal([aliceJob], jobs.EnumerateArray().Select(j => j.GetProperty("id").GetString()));
        Assert.Equal("alice", jobs[0].GetProperty("owner").GetString());
        Assert.Equal(10, (await Json(asAlice, $"/api/jobs/{aliceJob}/history")).GetProperty("rows").GetArrayLength());
        // Another's job answers exactly as a job that does not exist, on every path.
        var none = await asAlice.GetAsync("/api/jobs/job-0099");
        Assert.Equal(HttpStatusCode.NotFound, none.StatusCode);
        var noneText = await none.Content.ReadAsStringAsync();
        foreach (var path in new[] { "", "/history", "/events", "/metrics.csv", "/sample", "/checkpoints/ckpt-000000010.dtck" })
        {
            var reply = await asAlice.GetAsync($"/api/jobs/{bobJob}{path}");
            Assert.True(reply.StatusCode == HttpStatusCode.NotFound, $"{bobJob}{path}: {reply.StatusCode}");
            Assert.Equal(noneText.Replace("job-0099", bobJob, StringComparison.Ordinal), await reply.Content.ReadAsStringAsync());
        }
        Assert.Contains(AuthTestSupport.Lines(cluster.DataDir, "job.denied", ("job", bobJob), ("user", "alice")), l => l.Field("action") == "dashboard history");
        var workers = await asAlice.GetAsync("/api/workers");
        Assert.Equal(HttpStatusCode.Forbidden, workers.StatusCode);
        Assert.Contains("may not list the workers", await workers.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.False((await Json(asAlice, "/api/auth")).GetProperty("may_list_workers").GetBoolean());
        // The jobs stream carries only hers, and no workers.
        var stream = await FirstEvents(asAlice, "/api/stream", 1);
        Assert.Equal("jobs", stream[0].Event);
        Assert.Equal([aliceJob], JsonDocument.Parse(stream[0].Data).RootElement.EnumerateArray().Select(j => j.GetProperty("id").GetString()));

        // The gRPC History call keeps the same rule.
        Assert.Equal(StatusCode.NotFound, AuthTestSupport.Refused(() => alice.Client.History(new GetJobRequest { JobId = bobJob })).StatusCode);
        Assert.Equal(10, alice.Client.History(new GetJobRequest { JobId = aliceJob }).Events.Count(e => e.KindCase == JobEvent.KindOneofCase.Step));

        using var asViewer = Http(cluster.HttpAddress!, viewer.Token);
        Assert.Equal([aliceJob, bobJob], (await Json(asViewer, "/api/jobs")).EnumerateArray().Select(j => j.GetProperty("id").GetString()));
        Assert.Equal(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Select(w => w.WorkerId),
            (await Json(asViewer, "/api/workers")).EnumerateArray().Select(w => w.GetProperty("id").GetString()));
    }

    [Fact]
    public async Task A_finished_job_replays_its_events_and_ends_its_stream_and_its_checkpoints_download_through_the_same_auth()
    {
        await using var cluster = await InProcessCluster.StartAsync(2, WithDashboard);
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: 20);
        spec = spec with { Training = spec.Training with { EvalInterval = 10, CheckpointInterval = 10 } };
        var path = tmp.Write("lm.json", Dtrain.Specs.JobSpecSerializer.Serialize(spec));
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.Equal(JobState.Succeeded, info.State);

        using var http = Http(cluster.HttpAddress!, cluster.AdminToken);
        var events = await FirstEvents(http, $"/api/jobs/{id}/events", int.MaxValue);
        Assert.Equal(20, events.Count(e => e.Event == "step"));
        Assert.Equal(2, events.Count(e => e.Event == "eval"));
        Assert.Equal("end", events[^1].Event);
        Assert.Equal("succeeded", JsonDocument.Parse(events[^1].Data).RootElement.GetProperty("state").GetString());

        var detail = await Json(http, $"/api/jobs/{id}");
        Assert.Equal("test-lm", detail.GetProperty("spec").GetProperty("name").GetString());
        var checkpoints = detail.GetProperty("checkpoints").EnumerateArray().ToList();
        Assert.Equal([10L, 20L], checkpoints.Select(c => c.GetProperty("step").GetInt64()));
        var newest = checkpoints[^1].GetProperty("url").GetString()!;
        Assert.Equal(File.ReadAllBytes(cluster.CheckpointFile(info)), await http.GetByteArrayAsync(newest));
        using (var anonymous = Http(cluster.HttpAddress!))
            Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync(newest)).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync($"/api/jobs/{id}/checkpoints/..%2Fspec.json")).StatusCode);
        Assert.Single(AuthTestSupport.Lines(cluster.DataDir, "job.download", ("job", id), ("via", "dashboard")));

        var csv = await http.GetStringAsync($"/api/jobs/{id}/metrics.csv");
        Assert.Equal(21, csv.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        var sample = await Json(http, $"/api/jobs/{id}/sample");
        Assert.Equal(20, sample.GetProperty("step").GetInt64());
        Assert.False(string.IsNullOrEmpty(sample.GetProperty("text").GetString()));
    }

    [Fact]
    public async Task With_tls_the_dashboard_is_https_with_the_coordinators_certificate_and_still_needs_a_token()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard, pki: pki);
        Assert.StartsWith("https://127.0.0.1:", cluster.HttpAddress, StringComparison.Ordinal);
        // A browser has no client certificate: the page is reached with the cluster CA's trust alone.
        var trust = new System.Security.Cryptography.X509Certificates.X509Certificate2Collection(pki.Authority);
        using var handler = new HttpClientHandler
        {
            AllowAutoRedirect = false,
            ServerCertificateCustomValidationCallback = (_, certificate, _, _) =>
            {
                using var chain = new System.Security.Cryptography.X509Certificates.X509Chain();
                chain.ChainPolicy.TrustMode = System.Security.Cryptography.X509Certificates.X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.AddRange(trust);
                chain.ChainPolicy.RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck;
                return certificate is not null && chain.Build(certificate);
            },
        };
        using var http = new HttpClient(handler) { BaseAddress = new Uri(cluster.HttpAddress!) };
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.GetAsync("/api/jobs")).StatusCode);
        using var request = new HttpRequestMessage(HttpMethod.Get, "/api/workers");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", cluster.AdminToken);
        var reply = await http.SendAsync(request);
        Assert.Equal(HttpStatusCode.OK, reply.StatusCode);
        Assert.Single(JsonDocument.Parse(await reply.Content.ReadAsStringAsync()).RootElement.EnumerateArray());
        // Plaintext HTTP on that port gets no page.
        using var plain = new HttpClient();
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => plain.GetAsync(cluster.HttpAddress!.Replace("https://", "http://", StringComparison.Ordinal) + "/api/jobs"));
    }

    public sealed record Sse(string Event, string Data);

    /// <summary>Reads server-sent events until <paramref name="count"/> have arrived or the stream ends.</summary>
    static async Task<List<Sse>> FirstEvents(HttpClient http, string path, int count)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        using var reply = await http.GetAsync(path, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        Assert.Equal(HttpStatusCode.OK, reply.StatusCode);
        Assert.Equal("text/event-stream", reply.Content.Headers.ContentType!.MediaType);
        await using var body = await reply.Content.ReadAsStreamAsync(cts.Token);
        var list = new List<Sse>();
        await foreach (var item in System.Net.ServerSentEvents.SseParser.Create(body).EnumerateAsync(cts.Token))
        {
            list.Add(new Sse(item.EventType, item.Data));
            if (list.Count >= count) break;
        }
        return list;
    }
}
