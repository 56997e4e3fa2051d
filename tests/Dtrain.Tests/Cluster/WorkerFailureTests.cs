using System.Diagnostics;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Real processes: in a job that needs all its workers (--min-workers = its workers), a worker that dies or hangs mid-job
/// fails that job within a bounded time, naming the worker and the step; the rest of the cluster takes the next job.
/// (Elastic jobs, which go on without it, are in <see cref="ElasticTests"/>.)
/// </summary>
public class WorkerFailureTests
{
    static readonly Dictionary<string, string> FastTimeouts = new()
    {
        ["DTRAIN_Coordinator__HeartbeatIntervalMs"] = "300",
        ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = "3",
        ["DTRAIN_Coordinator__StepTimeoutSeconds"] = "20",
        ["DTRAIN_Coordinator__WaitForWorkersSeconds"] = "1",
    };

    static string SubmitRigid(Jobs.JobsClient client, string spec, int workers)
    {
        var request = JobCommands.BuildSubmit(client, new FileInfo(spec), workers);
        request.MinWorkers = workers;
        return client.Submit(request).JobId;
    }

    static (TempDir Tmp, string Spec) LongJob(int steps)
    {
        var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: steps);
        spec = spec with { Training = spec.Training with { EvalInterval = 0, CheckpointInterval = 0, BatchSize = 8 } };
        return (tmp, tmp.Write("job.json", JobSpecSerializer.Serialize(spec)));
    }

    static async Task WaitForStep(Jobs.JobsClient client, string id, long step)
    {
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (client.Get(new GetJobRequest { JobId = id }).Step < step)
        {
            Assert.True(DateTime.UtcNow < deadline, $"job {id} did not reach step {step}");
            await Task.Delay(100);
        }
    }

    /// <summary>The coordinator's id of the worker process started as worker-(index+1).</summary>
    static string IdOfWorker(Jobs.JobsClient client, int index) =>
        client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == $"worker-{index + 1}").WorkerId;

    static async Task<JobInfo> WaitForEnd(Jobs.JobsClient client, string id, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var info = client.Get(new GetJobRequest { JobId = id });
            if (info.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled) return info;
            Assert.True(DateTime.UtcNow < deadline, $"job {id} still {info.State} after {timeout}: a hang");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Killed_worker_fails_the_job_naming_it_and_the_step_and_the_others_take_the_next_job()
    {
        var (tmp, spec) = LongJob(100_000);
        using var _ = tmp;
        using var cluster = LocalCluster.Start(3, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), FastTimeouts);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var id = SubmitRigid(client, spec, 3);
        await WaitForStep(client, id, 3);
        var victim = IdOfWorker(client, 1);
        Assert.Contains(victim, client.Get(new GetJobRequest { JobId = id }).WorkerIds);
        cluster.KillWorker(1);
        var info = await WaitForEnd(client, id, TimeSpan.FromSeconds(30));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains(victim, info.Message);
        Assert.Contains("step", info.Message);
        // Found dead (connection refused, or no heartbeat), not merely timed out waiting for its step.
        Assert.DoesNotContain("did not finish", info.Message);

        var next = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(tmp.Write("short.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 5)))), 2)).JobId;
        var done = await WaitForEnd(client, next, TimeSpan.FromSeconds(60));
        Assert.True(done.State == JobState.Succeeded, $"{done.State}: {done.Message}");
        Assert.DoesNotContain(victim, done.WorkerIds);
    }

    [Fact]
    public async Task Hung_worker_fails_the_job_within_the_configured_timeout()
    {
        var (tmp, spec) = LongJob(100_000);
        using var _ = tmp;
        using var cluster = LocalCluster.Start(2, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), FastTimeouts);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var id = SubmitRigid(client, spec, 2);
        await WaitForStep(client, id, 3);
        var victim = IdOfWorker(client, 1);
        var pid = cluster.WorkerProcessId(1);
        Process.Start("kill", ["-STOP", pid.ToString(System.Globalization.CultureInfo.InvariantCulture)])!.WaitForExit();
        try
        {
            var info = await WaitForEnd(client, id, TimeSpan.FromSeconds(30));
            Assert.Equal(JobState.Failed, info.State);
            Assert.Contains(victim, info.Message);
            Assert.Contains("step", info.Message);
            // A stopped process sends no heartbeats: it is lost (after 3 s), which the message says — not the 20 s
            // step timeout (that path has its own test, with a worker that keeps heart-beating).
            Assert.Contains("lost: no heartbeat", info.Message);
        }
        finally
        {
            Process.Start("kill", ["-CONT", pid.ToString(System.Globalization.CultureInfo.InvariantCulture)])!.WaitForExit();
        }
    }
}
