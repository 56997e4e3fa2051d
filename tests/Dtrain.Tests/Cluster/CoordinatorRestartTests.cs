using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Real processes: the coordinator is killed (SIGKILL) mid-job and started again on the same data directory and port.
/// Its jobs come back from its store: the running one resumes from its newest checkpoint and ends as an
/// uninterrupted run does, the queued one stays queued and runs after, the finished one stays listed and
/// downloadable, ids continue, and a `dtrain watch` started before the kill reconnects and exits 0.
/// </summary>
public class CoordinatorRestartTests
{
    static readonly Dictionary<string, string> FastTimeouts = new()
    {
        ["DTRAIN_Coordinator__HeartbeatIntervalMs"] = "300",
        ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = "3",
    };

    static async Task<JobInfo> WaitFor(Jobs.JobsClient client, string id, Func<JobInfo, bool> done, DateTime deadline)
    {
        while (true)
        {
            var info = client.Get(new GetJobRequest { JobId = id });
            if (done(info)) return info;
            Assert.True(DateTime.UtcNow < deadline, $"job {id}: {info.State} at step {info.Step}: {info.Message}");
            Assert.False(info.State is JobState.Failed or JobState.Cancelled, $"job {id} {info.State}: {info.Message}");
            await Task.Delay(50);
        }
    }

    // Steps over shared memory take milliseconds: 600 of them ended before a CI machine under load let the test look
    // at step 50 (the job, then the queued one, had finished). 2000 leave seconds between that look and the end.
    const int Steps = 2000;

    /// <summary>
    /// Writes t.txt and lm.json: a job of <see cref="Steps"/> steps checkpointing every 20, long enough that it is still
    /// running when a test looks at step 30-50 (steps over shared memory take milliseconds).
    /// </summary>
    static string LongJob(TempDir tmp)
    {
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: Steps);
        spec = spec with { Training = spec.Training with { BatchSize = 8, SeqLen = 16, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 20 } };
        return tmp.Write("lm.json", JobSpecSerializer.Serialize(spec));
    }

    [Fact]
    public async Task Killed_coordinator_restarts_on_its_data_dir_and_its_jobs_resume_stay_queued_and_stay_downloadable()
    {
        using var tmp = new TempDir();
        var path = LongJob(tmp);
        var small = tmp.Write("small.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 10)));
        using var cluster = LocalCluster.Start(2, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), FastTimeouts);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var deadline = DateTime.UtcNow.AddMinutes(8);

        // The reference: the same job, uninterrupted. It is also the finished job that must stay downloadable.
        var clean = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId;
        var reference = await WaitFor(client, clean, i => i.State == JobState.Succeeded, deadline);

        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId;
        var queued = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(small), 2)).JobId;
        var watch = Task.Run(() => CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(8), "watch", id, "--coordinator", cluster.Address, "--plain"));
        var before = await WaitFor(client, id, i => i.Checkpoint != "" && i.Step >= 50, deadline);
        Assert.True(before.State is JobState.Running or JobState.Waiting, $"job {id} is {before.State} at step {before.Step} of {Steps} before the kill: the test looked too late");
        Assert.Equal(JobState.Queued, client.Get(new GetJobRequest { JobId = queued }).State);

        cluster.KillCoordinator();
        cluster.RestartCoordinator(TimeSpan.FromMinutes(2));

        // The finished job: listed, same record, downloadable, its ledger kept.
        var list = client.List(new ListJobsRequest()).Jobs;
        Assert.Equal([clean, id, queued], list.Select(j => j.JobId));
        var kept = list[0];
        Assert.Equal(JobState.Succeeded, kept.State);
        Assert.Equal(reference.LastEval, kept.LastEval);
        Assert.Equal(reference.Checkpoint, kept.Checkpoint);
        var model = Path.Combine(tmp.Path, "clean.dtck");
        Assert.Equal(0, JobCommands.DownloadTo(client, clean, model));
        Assert.Equal(File.ReadAllBytes(InProcessCluster.CheckpointFile(Path.Combine(cluster.LogDir, "coordinator"), reference)), File.ReadAllBytes(model));
        Assert.Equal(Steps, client.Ledger(new GetJobRequest { JobId = clean }).Steps.Count);

        // The interrupted job resumes from its newest checkpoint: one of every 20 steps, no older than the newest one
        // seen before the kill (the job went on for a few steps between that look and the kill, and may have taken
        // another; a step is counted just before its checkpoint is saved, hence step - 1); the queued one waits behind it.
        var resumed = client.Get(new GetJobRequest { JobId = id });
        Assert.Equal(0, resumed.Restarts);
        Assert.True(resumed.StartStep % 20 == 0 && resumed.StartStep >= (before.Step - 1) / 20 * 20 && resumed.StartStep < Steps,
            $"resumed at {resumed.StartStep}, was at {before.Step} (checkpoints every 20 steps) when last seen before the kill");
        Assert.True(resumed.Generation >= before.Generation, $"generation {resumed.Generation} after {before.Generation}");
        var info = await WaitFor(client, id, i => i.State == JobState.Succeeded, deadline);
        Assert.Equal(Steps, info.Step);
        var drift = Math.Abs(info.LastEval.Loss - reference.LastEval.Loss) / reference.LastEval.Loss;
        Assert.True(drift <= 0.02, $"validation loss {info.LastEval.Loss} after the restart vs {reference.LastEval.Loss} uninterrupted ({drift:P2})");
        using (var a = Dtrain.Inference.TrainedModel.Load(InProcessCluster.CheckpointFile(Path.Combine(cluster.LogDir, "coordinator"), reference)))
        using (var b = Dtrain.Inference.TrainedModel.Load(InProcessCluster.CheckpointFile(Path.Combine(cluster.LogDir, "coordinator"), info)))
        {
            var relative = ParameterDiff.MaxRelative(a.Engine.Parameters, b.Engine.Parameters);
            Assert.True(relative <= 1e-5, $"resumed vs uninterrupted: max |dp| / max |p| = {relative:E2}");
        }
        Assert.Empty(SampleLedger.Check(ProtoMapper.FromProto(client.Ledger(new GetJobRequest { JobId = id })), 0, Steps));

        var result = await watch;
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("coordinator unreachable", result.Stderr, StringComparison.Ordinal);
        Assert.Contains($"{id}: succeeded after {Steps} of {Steps} steps", result.Stdout, StringComparison.Ordinal);

        var last = await WaitFor(client, queued, i => i.State == JobState.Succeeded, deadline);
        // The resumed job goes first whenever its workers come back (JobQueue): a queued job never takes a worker that
        // became idle for it (CI saw the queued job start first once, when the second worker's heartbeat came between the
        // scheduler's look for the restart and its look for the queue).
        Assert.True(last.StartedUnixMs >= info.StartedUnixMs,
            $"the queued job must run after the resumed one: it started at {last.StartedUnixMs}, the resumed one at {info.StartedUnixMs} (unix ms)");
        // Numbering continues after the highest job.
        var next = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(small), 1)).JobId;
        Assert.Equal("job-0004", next);
        Assert.Equal(StatusCode.NotFound, Assert.Throws<RpcException>(() => client.Get(new GetJobRequest { JobId = "job-0005" })).StatusCode);
    }

    [Fact]
    public async Task A_coordinator_stopped_with_SIGTERM_while_a_watch_is_attached_stops_promptly_and_its_running_job_resumes()
    {
        // An open `dtrain watch` kept Kestrel's graceful shutdown waiting while it refused heartbeats: the job's workers
        // counted as lost and the job failed for good instead of resuming after the restart.
        using var tmp = new TempDir();
        var path = LongJob(tmp);
        using var cluster = LocalCluster.Start(1, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), FastTimeouts);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var deadline = DateTime.UtcNow.AddMinutes(5);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 1)).JobId;
        var watch = Task.Run(() => CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(5), "watch", id, "--coordinator", cluster.Address, "--plain"));
        var before = await WaitFor(client, id, i => i.Checkpoint != "" && i.Step >= 30, deadline);
        Assert.Equal(JobState.Running, before.State);

        var took = cluster.StopCoordinator(TimeSpan.FromSeconds(60));
        // Well inside the workers' timeout (3 s here; 0.1 s measured, 3.0 s or more before): nothing waits for the watch.
        Assert.True(took < TimeSpan.FromSeconds(2), $"the coordinator took {took.TotalSeconds:F1} s to stop");
        var log = File.ReadAllText(Path.Combine(cluster.LogDir, "coordinator.log"));
        Assert.DoesNotContain(log.Split('\n'), l => l.Contains(id, StringComparison.Ordinal) && l.Contains("Failed", StringComparison.Ordinal));

        cluster.RestartCoordinator(TimeSpan.FromMinutes(2));
        var resumed = await WaitFor(client, id, i => i.State == JobState.Running && i.Step > i.StartStep, deadline);
        Assert.True(resumed.StartStep > 0, $"the job restarted from step {resumed.StartStep}, not from its checkpoint");
        client.Cancel(new CancelJobRequest { JobId = id });
        var result = await watch;
        Assert.Contains("coordinator unreachable", result.Stderr, StringComparison.Ordinal);   // it rode the restart out
    }
}
