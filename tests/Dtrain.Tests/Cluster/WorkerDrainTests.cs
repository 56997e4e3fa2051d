using System.Diagnostics;
using System.Globalization;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Real processes and real signals: SIGTERM (docker stop, compose scale-down, a pod's termination) makes an idle
/// worker leave at once and a training worker finish its step, tell the coordinator, and exit 0; the job then
/// fails naming it (continuing without it is the fault-tolerance work).
/// </summary>
public class WorkerDrainTests
{
    static void Terminate(LocalCluster cluster, int index) =>
        Process.Start("kill", ["-TERM", cluster.WorkerProcessId(index).ToString(CultureInfo.InvariantCulture)])!.WaitForExit();

    static string IdOfWorker(Jobs.JobsClient client, int index) =>
        client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == $"worker-{index + 1}").WorkerId;

    static async Task<JobInfo> WaitFor(Jobs.JobsClient client, string id, Func<JobInfo, bool> done, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var info = client.Get(new GetJobRequest { JobId = id });
            if (done(info)) return info;
            Assert.True(DateTime.UtcNow < deadline, $"job {id} still {info.State} at step {info.Step} after {timeout}");
            await Task.Delay(100);
        }
    }

    static bool Ended(JobInfo i) => i.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled;

    [Fact]
    public async Task Sigterm_mid_job_finishes_the_step_leaves_and_fails_the_job_naming_the_worker()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: 100_000);
        spec = spec with { Training = spec.Training with { EvalInterval = 0, CheckpointInterval = 0, BatchSize = 8 } };
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        using var cluster = LocalCluster.Start(3, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2),
            new Dictionary<string, string> { ["DTRAIN_Coordinator__WaitForWorkersSeconds"] = "1" });
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        // A job that needs all 3 workers (an elastic one goes on without the one that leaves: ElasticTests).
        var request = JobCommands.BuildSubmit(client, new FileInfo(path), 3);
        request.MinWorkers = 3;
        var id = client.Submit(request).JobId;
        await WaitFor(client, id, i => i.Step >= 3, TimeSpan.FromSeconds(90));
        var victim = IdOfWorker(client, 1);

        Terminate(cluster, 1);
        var exit = cluster.WaitForWorkerExit(1, TimeSpan.FromSeconds(30));
        Assert.True(exit == 0, $"worker exit status {exit?.ToString(CultureInfo.InvariantCulture) ?? "(still running after 30 s)"}; logs in {cluster.LogDir}");
        var info = await WaitFor(client, id, Ended, TimeSpan.FromSeconds(30));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"worker {victim} ", info.Message);
        Assert.Contains("left after step", info.Message);
        Assert.Contains("shutting down", info.Message);

        // It left: not lost, not listed; the others are idle again and take the next job.
        var workers = client.ListWorkers(new ListWorkersRequest()).Workers;
        Assert.DoesNotContain(workers, w => w.WorkerId == victim);
        Assert.DoesNotContain(workers, w => w.State == WorkerState.Lost);
        var next = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(tmp.Write("short.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 5)))), 2)).JobId;
        var done = await WaitFor(client, next, Ended, TimeSpan.FromSeconds(60));
        Assert.True(done.State == JobState.Succeeded, $"{done.State}: {done.Message}");
    }

    [Fact]
    public async Task Sigterm_on_an_idle_worker_leaves_at_once()
    {
        using var tmp = new TempDir();
        using var cluster = LocalCluster.Start(2, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2));
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var victim = IdOfWorker(client, 0);
        var clock = Stopwatch.StartNew();
        Terminate(cluster, 0);
        Assert.Equal(0, cluster.WaitForWorkerExit(0, TimeSpan.FromSeconds(20)));
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (client.ListWorkers(new ListWorkersRequest()).Workers.Any(w => w.WorkerId == victim))
        {
            Assert.True(DateTime.UtcNow < deadline, $"worker {victim} still listed {clock.Elapsed.TotalSeconds:F1}s after SIGTERM");
            await Task.Delay(100);
        }
        var left = Assert.Single(client.ListWorkers(new ListWorkersRequest()).Workers);
        Assert.Equal(WorkerState.Idle, left.State);
    }
}
