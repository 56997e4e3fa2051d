using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using System.Text.RegularExpressions;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Security;
using Dtrain.Tests.Support;
using Dtrain.Worker;

namespace Dtrain.Tests.Observability;

/// <summary>Prometheus /metrics on a live coordinator and live workers (real servers on loopback, a real job).</summary>
public class MetricsTests
{
    /// <summary>A coordinator and <paramref name="workers"/> workers, each with an HTTP listener on a free port.</summary>
    internal static async Task<InProcessCluster> StartAsync(int workers, string? token = null)
    {
        var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { HttpPort = 0, MetricsToken = token });
        for (var i = 0; i < workers; i++) await cluster.AddWorkerAsync(new WorkerOptions { HttpPort = 0, MetricsToken = token });
        await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        return cluster;
    }

    /// <summary>A token of role metrics on <paramref name="cluster"/> (auth is on in every test cluster): what Prometheus scrapes the coordinator with.</summary>
    internal static string ScrapeToken(InProcessCluster cluster) => AuthTestSupport.Token(cluster, "prometheus", Role.Metrics).Token;

    /// <summary>An HTTP client that sends <paramref name="token"/> as its bearer token.</summary>
    internal static HttpClient Scraper(string token) => new() { DefaultRequestHeaders = { Authorization = new AuthenticationHeaderValue("Bearer", token) } };

    internal static string CoordinatorHttp(InProcessCluster cluster) => $"http://127.0.0.1:{cluster.CoordinatorService<ServerEndpoints>().Http!.IPEndPoint!.Port}";

    internal static string WorkerHttp(InProcessCluster cluster, int index) => cluster.WorkerService<WorkerIdentity>(index).HttpAddress;

    internal static string Submit(InProcessCluster cluster, TempDir tmp, int steps, int workers)
    {
        tmp.Write("t.txt", TestJobs.Text(150));
        var spec = TestJobs.CharLm("t.txt", steps: steps);
        spec = spec with { Training = spec.Training with { EvalInterval = 10, CheckpointInterval = 10 } };
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        return cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), workers)).JobId;
    }

    static double Value(string text, string series)
    {
        var m = Regex.Match(text, "^" + Regex.Escape(series) + " (?<v>\\S+)$", RegexOptions.Multiline);
        Assert.True(m.Success, $"no series {series} in:\n{text}");
        return double.Parse(m.Groups["v"].Value, CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task Coordinator_and_workers_expose_training_figures_after_a_job()
    {
        using var tmp = new TempDir();
        await using var cluster = await StartAsync(2);
        var id = Submit(cluster, tmp, 20, 2);
        var done = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.Equal(JobState.Succeeded, done.State);
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));   // the job's workers are released just after it ends

        using var http = Scraper(ScrapeToken(cluster));
        var coordinator = await http.GetStringAsync(CoordinatorHttp(cluster) + "/metrics");
        Assert.Equal(20, Value(coordinator, $"dtrain_job_step{{job_id=\"{id}\"}}"));
        Assert.Equal(done.Loss, Value(coordinator, $"dtrain_job_loss{{job_id=\"{id}\"}}"), 6);
        Assert.True(Value(coordinator, $"dtrain_job_samples_per_second{{job_id=\"{id}\"}}") > 0);
        Assert.Equal(done.LastEval.Loss, Value(coordinator, $"dtrain_job_validation{{job_id=\"{id}\",metric=\"loss\"}}"), 6);
        Assert.True(Value(coordinator, $"dtrain_job_validation{{job_id=\"{id}\",metric=\"perplexity\"}}") > 1);
        Assert.Equal(20, Value(coordinator, $"dtrain_job_step_seconds_count{{job_id=\"{id}\"}}"));
        Assert.Equal(20, Value(coordinator, $"dtrain_job_allreduce_seconds_count{{job_id=\"{id}\"}}"));
        // Listed from the first step on, at 0 while nothing was skipped (it appeared only after a skipped step).
        Assert.Equal(0, Value(coordinator, $"dtrain_job_skipped_steps_total{{job_id=\"{id}\"}}"));
        Assert.Equal(done.CheckpointBytes, Value(coordinator, $"dtrain_job_checkpoint_bytes{{job_id=\"{id}\"}}"));
        Assert.True(done.CheckpointBytes > 0 && done.CheckpointSeconds > 0, done.ToString());
        Assert.Equal(1, Value(coordinator, "dtrain_jobs{state=\"succeeded\"}"));
        Assert.Equal(0, Value(coordinator, "dtrain_queue_length"));
        Assert.Equal(2, Value(coordinator, "dtrain_workers{state=\"idle\"}"));
        Assert.Contains("process_cpu_seconds_total", coordinator);

        for (var w = 0; w < 2; w++)
        {
            var worker = await http.GetStringAsync(WorkerHttp(cluster, w) + "/metrics");
            Assert.Equal(20, Value(worker, $"dtrain_worker_steps_total{{job_id=\"{id}\"}}"));
            Assert.Equal(20, Value(worker, $"dtrain_worker_allreduce_seconds_count{{job_id=\"{id}\",transport=\"shm\"}}"));
            Assert.True(Value(worker, $"dtrain_worker_allreduce_bytes_total{{job_id=\"{id}\",transport=\"shm\"}}") > 0);
            Assert.Equal(1, Value(worker, "dtrain_worker_phase{phase=\"idle\"}"));
            Assert.Equal(1, Value(worker, "dtrain_worker_transport_info{transport=\"none\"}"));
        }

        // Service discovery for Prometheus: both workers' metrics addresses, labelled with their ids.
        using var targets = JsonDocument.Parse(await http.GetStringAsync(CoordinatorHttp(cluster) + "/metrics/targets"));
        var listed = targets.RootElement.EnumerateArray().Select(g => (Target: g.GetProperty("targets")[0].GetString(), Worker: g.GetProperty("labels").GetProperty("worker").GetString())).ToList();
        Assert.Equal(2, listed.Count);
        for (var w = 0; w < 2; w++) Assert.Contains(listed, t => t.Target == new Uri(WorkerHttp(cluster, w)).Authority);
    }

    [Fact]
    public async Task With_a_scrape_token_metrics_need_it()
    {
        const string token = "scrape-token-0123456789";
        await using var cluster = await StartAsync(1, token);
        using var http = new HttpClient();
        foreach (var url in new[] { CoordinatorHttp(cluster) + "/metrics", CoordinatorHttp(cluster) + "/metrics/targets", WorkerHttp(cluster, 0) + "/metrics" })
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.GetAsync(url)).StatusCode);
            using var wrong = new HttpRequestMessage(HttpMethod.Get, url) { Headers = { Authorization = new AuthenticationHeaderValue("Bearer", "not-the-token-at-all") } };
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.SendAsync(wrong)).StatusCode);
            using var right = new HttpRequestMessage(HttpMethod.Get, url) { Headers = { Authorization = new AuthenticationHeaderValue("Bearer", token) } };
            Assert.Equal(HttpStatusCode.OK, (await http.SendAsync(right)).StatusCode);
        }
    }

    [Fact]
    public void A_short_scrape_token_or_stall_warning_is_refused_naming_the_option()
    {
        Assert.Contains(new CoordinatorOptions { MetricsToken = "short" }.Validate(), e => e.Contains("Coordinator:MetricsToken", StringComparison.Ordinal));
        Assert.Contains(new WorkerOptions { MetricsToken = "short" }.Validate(), e => e.Contains("Worker:MetricsToken", StringComparison.Ordinal));
        Assert.Contains(new CoordinatorOptions { StallWarningSeconds = 0 }.Validate(), e => e.Contains("Coordinator:StallWarningSeconds", StringComparison.Ordinal));
        Assert.Contains(new CoordinatorOptions { StallWarningSeconds = double.NaN }.Validate(), e => e.Contains("Coordinator:StallWarningSeconds", StringComparison.Ordinal));
        Assert.Empty(new CoordinatorOptions().Validate());
    }
}
