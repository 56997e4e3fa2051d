using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography.X509Certificates;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Tests.Cluster;
using Dtrain.Worker;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Security;

/// <summary>
/// Who may read /metrics and /metrics/targets (every tenant's job ids and losses, every worker's name and address) and the
/// dashboard: real coordinators and workers, scraped over real sockets. Beyond loopback (TLS, auth on) a scrape needs a
/// client certificate from the cluster CA and a token of role metrics (or viewer/admin); a submitter's token is refused;
/// a metrics token opens nothing else; with Coordinator:Auth=off over TLS the dashboard's API needs the certificate.
/// </summary>
public class MetricsAccessTests
{
    /// <summary>An HTTPS client presenting <paramref name="certificate"/> (none when null) and <paramref name="token"/> (none when null).</summary>
    static HttpClient Client(X509Certificate2? certificate, string? token)
    {
        var handler = new HttpClientHandler
        {
            // What is tested here is the client's credentials; the server's certificate is checked by the TLS tests.
            ServerCertificateCustomValidationCallback = (_, _, _, _) => true,
            ClientCertificateOptions = ClientCertificateOption.Manual,
        };
        if (certificate is not null) handler.ClientCertificates.Add(certificate);
        var client = new HttpClient(handler);
        if (token is not null) client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return client;
    }

    static X509Certificate2 ClientCertificate(TestPki pki) =>
        X509Certificate2.CreateFromPemFile(Path.Combine(pki.ClientDir, TlsSettings.CertFile), Path.Combine(pki.ClientDir, TlsSettings.KeyFile));

    static async Task<(HttpStatusCode Status, string Body)> Get(HttpClient client, string url)
    {
        using var response = await client.GetAsync(url);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Beyond_loopback_a_scrape_needs_the_client_certificate_and_a_metrics_token_and_a_submitter_is_refused()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { Listen = "0.0.0.0", HttpPort = 0 }, pki: pki);
        await cluster.AddWorkerAsync(new WorkerOptions { HttpPort = 0 });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        var web = $"https://127.0.0.1:{cluster.CoordinatorService<ServerEndpoints>().Http!.IPEndPoint!.Port}";
        var worker = cluster.WorkerService<WorkerIdentity>(0).HttpAddress;
        Assert.StartsWith("https://", worker, StringComparison.Ordinal);
        var scrape = AuthTestSupport.Token(cluster, "prometheus", Role.Metrics);
        var alice = AuthTestSupport.Token(cluster, "alice", Role.Submitter);
        var viewer = AuthTestSupport.Token(cluster, "grafana", Role.Viewer);
        using var certificate = ClientCertificate(pki);

        foreach (var path in new[] { "/metrics", "/metrics/targets" })
        {
            var url = web + path;
            using (var anonymous = Client(null, null))
            {
                var (status, body) = await Get(anonymous, url);
                Assert.Equal(HttpStatusCode.Unauthorized, status);
                Assert.Contains("needs a client certificate signed by the cluster CA", body, StringComparison.Ordinal);
            }
            using (var tokenOnly = Client(null, scrape.Token))
                Assert.Equal(HttpStatusCode.Unauthorized, (await Get(tokenOnly, url)).Status);
            using (var certificateOnly = Client(certificate, null))
            {
                var (status, body) = await Get(certificateOnly, url);
                Assert.Equal(HttpStatusCode.Unauthorized, status);
                Assert.Contains("requires a bearer token", body, StringComparison.Ordinal);
            }
            using (var submitter = Client(certificate, alice.Token))
            {
                var (status, body) = await Get(submitter, url);
                Assert.Equal(HttpStatusCode.Forbidden, status);
                Assert.Contains("role submitter, which may not read every job's metrics", body, StringComparison.Ordinal);
            }
            using (var wrong = Client(certificate, "dtr_not-a-token-on-this-coordinator"))
                Assert.Equal(HttpStatusCode.Unauthorized, (await Get(wrong, url)).Status);
            using (var prometheus = Client(certificate, scrape.Token))
            {
                var (status, body) = await Get(prometheus, url);
                Assert.Equal(HttpStatusCode.OK, status);
                Assert.Contains(path == "/metrics" ? "dtrain_workers" : new Uri(worker).Authority, body, StringComparison.Ordinal);
            }
            using (var reader = Client(certificate, viewer.Token))
                Assert.Equal(HttpStatusCode.OK, (await Get(reader, url)).Status);
        }

        // The worker's /metrics asks for the client certificate too, as its gRPC port does.
        using (var anonymous = Client(null, null))
            Assert.Equal(HttpStatusCode.Unauthorized, (await Get(anonymous, worker + "/metrics")).Status);
        using (var withCertificate = Client(certificate, null))
        {
            var (status, body) = await Get(withCertificate, worker + "/metrics");
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Contains("dtrain_worker_phase", body, StringComparison.Ordinal);
        }
        // A certificate of another role (a worker's) is not a scraper's.
        using (var workerCertificate = pki.Issue("someone", ClusterRoles.Worker))
        using (var asWorker = Client(workerCertificate, scrape.Token))
            Assert.Equal(HttpStatusCode.Forbidden, (await Get(asWorker, web + "/metrics")).Status);

        // A metrics token opens nothing else: not the dashboard, not its API, not the Jobs API.
        using (var prometheus = Client(certificate, scrape.Token))
        {
            Assert.Equal(HttpStatusCode.Forbidden, (await Get(prometheus, web + "/api/jobs")).Status);
            var (status, body) = await Get(prometheus, web + "/api/workers");
            Assert.Equal(HttpStatusCode.Forbidden, status);
            Assert.Contains("role metrics, which may only read /metrics", body, StringComparison.Ordinal);
        }
        var refused = AuthTestSupport.Refused(() => scrape.Client.List(new ListJobsRequest()));
        Assert.Equal(StatusCode.PermissionDenied, refused.StatusCode);
        Assert.Contains("role metrics", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.PermissionDenied, AuthTestSupport.Refused(() => scrape.Client.ListWorkers(new ListWorkersRequest())).StatusCode);
    }

    [Fact]
    public async Task With_auth_off_over_TLS_the_dashboard_and_metrics_need_the_client_certificate_as_the_grpc_port_does()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { Auth = "off", HttpPort = 0 }, pki: pki);
        var web = $"https://127.0.0.1:{cluster.CoordinatorService<ServerEndpoints>().Http!.IPEndPoint!.Port}";
        using var certificate = ClientCertificate(pki);
        using var anonymous = Client(null, null);
        using var client = Client(certificate, null);
        foreach (var path in new[] { "/api/jobs", "/api/auth", "/" })
        {
            var (status, body) = await Get(anonymous, web + path);
            Assert.Equal(HttpStatusCode.Forbidden, status);
            Assert.Contains("needs a client certificate signed by the cluster CA", body, StringComparison.Ordinal);
            Assert.Equal(HttpStatusCode.OK, (await Get(client, web + path)).Status);
        }
        Assert.Equal(HttpStatusCode.Unauthorized, (await Get(anonymous, web + "/metrics")).Status);
        Assert.Equal(HttpStatusCode.OK, (await Get(client, web + "/metrics")).Status);
        // The page's own scripts and styles hold no data: served to anyone.
        Assert.Equal(HttpStatusCode.OK, (await Get(anonymous, web + "/static/dashboard.js")).Status);
    }

    [Fact]
    public async Task On_loopback_without_tokens_metrics_stay_open_as_documented()
    {
        var dataDir = Directory.CreateTempSubdirectory("dtrain-metrics-open-").FullName;
        try
        {
            var app = CoordinatorHost.Build(new CoordinatorOptions { Port = 0, HttpPort = 0, DataDir = dataDir },
                l => l.SetMinimumLevel(LogLevel.Warning));
            await app.StartAsync();
            try
            {
                using var http = new HttpClient();
                var (status, body) = await Get(http, CoordinatorHost.HttpAddress(app) + "/metrics");
                Assert.Equal(HttpStatusCode.OK, status);
                Assert.Contains("dtrain_queue_length", body, StringComparison.Ordinal);
                // Once a token exists, auth is on (as for the Jobs API): the scrape needs one.
                TokenStore.Create(dataDir, "prometheus", Role.Metrics, DateTimeOffset.UtcNow);
                Assert.Equal(HttpStatusCode.Unauthorized, (await Get(http, CoordinatorHost.HttpAddress(app) + "/metrics")).Status);
            }
            finally
            {
                await app.StopAsync();
                await app.DisposeAsync();
            }
        }
        finally
        {
            Directory.Delete(dataDir, recursive: true);
        }
    }
}
