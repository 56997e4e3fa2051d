using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// `dtrain workers cordon / drain / uncordon` on real workers (gRPC on loopback) and the real CLI: a drained worker
/// leaves its elastic job at a step boundary (the job completes, every step once), stays up cordoned, takes no new job
/// until uncordoned; a drain that would leave a job below its minimum waits for a replacement; a pipeline job fails.
/// </summary>
public class OpsDrainTests(Xunit.Abstractions.ITestOutputHelper output)
{
    const int Steps = 600;

    static (TempDir Tmp, string Path) Job(int steps = Steps)
    {
        var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: steps);
        spec = spec with
        {
            Model = spec.Model with { HiddenSize = 48 },
            Training = spec.Training with { BatchSize = 12, SeqLen = 16, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 0 },
        };
        return (tmp, tmp.Write("job.json", JobSpecSerializer.Serialize(spec)));
    }

    static CliRunner.Result Cli(InProcessCluster cluster, TempDir tmp, params string[] args) =>
        CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(4), new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken }, [.. args, "--coordinator", cluster.Address]);

    static WorkerInfo Worker(InProcessCluster cluster, string name) =>
        cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == name && w.State != WorkerState.Lost);

    static async Task WaitForStep(InProcessCluster cluster, string id, long step)
    {
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (true)
        {
            var info = cluster.Client.Get(new GetJobRequest { JobId = id });
            if (info.Step >= step) return;
            Assert.True(info.State is JobState.Queued or JobState.Preparing or JobState.Running, $"job {id} is {info.State}: {info.Message}");
            Assert.True(DateTime.UtcNow < deadline, $"job {id} did not reach step {step}");
            await Task.Delay(20);
        }
    }

    static async Task<T> Eventually<T>(Func<T?> probe, string what, int seconds = 60) where T : class
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            if (probe() is { } found) return found;
            Assert.True(DateTime.UtcNow < deadline, what);
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task A_drained_worker_leaves_its_elastic_job_at_a_step_boundary_stays_up_cordoned_and_takes_no_job_until_uncordoned()
    {
        var (tmp, path) = Job();
        using var _ = tmp;
        await using var cluster = await InProcessCluster.StartAsync(3);
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 3)).JobId;
        await WaitForStep(cluster, id, 30);
        var victim = Worker(cluster, "test-2");

        // By name; the command waits until the worker has left its job.
        var askedAt = cluster.Client.Get(new GetJobRequest { JobId = id }).Step;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var drain = Cli(cluster, tmp, "workers", "drain", "test-2");
        var leftAt = cluster.Client.Get(new GetJobRequest { JobId = id }).Step;
        output.WriteLine($"drain command: {clock.Elapsed.TotalSeconds:F2} s (process start included), job at step {askedAt} before it and {leftAt} after it");
        Assert.True(drain.ExitCode == 0, drain.ToString());
        Assert.Contains($"worker {victim.WorkerId} (name test-2): cordoned; leaving {id} at the next step boundary", drain.Stdout);
        Assert.Contains($"worker {victim.WorkerId} (name test-2): left {id}; cordoned", drain.Stdout);
        var drained = Worker(cluster, "test-2");
        Assert.Equal((WorkerState.Cordoned, "", true), (drained.State, drained.JobId, drained.Cordoned));
        Assert.Equal(victim.WorkerId, drained.WorkerId); // the same registration: it stayed up
        Assert.Equal($"drained by cluster-admin; left {id}", drained.Message);
        var listing = Cli(cluster, tmp, "workers");
        Assert.Matches($@"│\s*{victim.WorkerId}\s*│\s*test-2\s*│[^│]*│\s*cordoned\s*│", listing.Stdout);

        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(4));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.WorkerIds.Count);
        Assert.DoesNotContain(victim.WorkerId, info.WorkerIds);
        Assert.Equal(2, info.Generation); // one change: the drain (no worker was lost or re-formed again)
        var ledger = cluster.Client.Ledger(new GetJobRequest { JobId = id });
        Assert.Empty(SampleLedger.Check(ProtoMapper.FromProto(ledger), 0, Steps));
        var lastWithVictim = ledger.Steps.Where(s => s.Shares.Any(x => x.WorkerId == victim.WorkerId)).Max(s => s.Step);
        Assert.True(lastWithVictim >= 29 && lastWithVictim < leftAt, $"drained after step {lastWithVictim}");
        output.WriteLine($"the drained worker trained steps 1-{lastWithVictim + 1}; {Steps} steps, generation {info.Generation}");
        Assert.All(ledger.Steps.Where(s => s.Step > lastWithVictim), s => Assert.Equal(2, s.Shares.Count));
        var status = Cli(cluster, tmp, "status", id, "--ledger");
        Assert.Contains($"every sample of steps 1-{Steps} seen exactly once", status.Stdout);
        Assert.Contains("(name test-1)", status.Stdout);

        // Cordoned: a job for "all idle workers" runs on the two others.
        var (tmp2, shortJob) = Job(steps: 10);
        using var __ = tmp2;
        var second = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(shortJob), 0)).JobId;
        var secondInfo = await cluster.WaitAsync(second, TimeSpan.FromMinutes(2));
        Assert.True(secondInfo.State == JobState.Succeeded, $"{secondInfo.State}: {secondInfo.Message}");
        Assert.Equal(2, secondInfo.WorkerIds.Count);
        Assert.DoesNotContain(victim.WorkerId, secondInfo.WorkerIds);
        Assert.Equal(WorkerState.Cordoned, Worker(cluster, "test-2").State);

        var uncordon = Cli(cluster, tmp, "workers", "uncordon", victim.WorkerId);
        Assert.True(uncordon.ExitCode == 0, uncordon.ToString());
        Assert.Contains($"worker {victim.WorkerId} (name test-2): uncordoned, idle", uncordon.Stdout);
        var third = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(shortJob), 3)).JobId;
        var thirdInfo = await cluster.WaitAsync(third, TimeSpan.FromMinutes(2));
        Assert.True(thirdInfo.State == JobState.Succeeded, $"{thirdInfo.State}: {thirdInfo.Message}");
        Assert.Contains(victim.WorkerId, thirdInfo.WorkerIds);
    }

    [Fact]
    public async Task A_drain_that_would_leave_a_job_below_its_minimum_waits_for_a_replacement()
    {
        var (tmp, path) = Job();
        using var _ = tmp;
        await using var cluster = await InProcessCluster.StartAsync(2);
        var request = JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2);
        request.MinWorkers = 2;
        var id = cluster.Client.Submit(request).JobId;
        await WaitForStep(cluster, id, 10);
        var victim = Worker(cluster, "test-2");

        var drain = Cli(cluster, tmp, "workers", "drain", victim.WorkerId, "--no-wait");
        Assert.True(drain.ExitCode == 0, drain.ToString());
        Assert.Contains($"leaving {id} at the next step boundary", drain.Stdout);
        // It stays in the job (draining) while the job would fall below its minimum of 2; the listing says why.
        var waiting = await Eventually(() => Worker(cluster, "test-2") is { Message: var m } w && m.StartsWith("drain waits", StringComparison.Ordinal) ? w : null, "the drain never said it waits");
        Assert.Equal(WorkerState.Draining, waiting.State);
        Assert.Equal($"drain waits: {id} needs at least 2 worker(s) and has 2; it leaves when an idle worker can take its place", waiting.Message);
        var before = cluster.Client.Get(new GetJobRequest { JobId = id });
        await WaitForStep(cluster, id, before.Step + 20);
        var during = cluster.Client.Get(new GetJobRequest { JobId = id });
        Assert.Equal(1, during.Generation);
        Assert.Contains(victim.WorkerId, during.WorkerIds);

        // A replacement arrives: it joins, takes the state, and the drained worker goes, in one step boundary.
        await cluster.AddWorkerAsync();
        await Eventually(() => Worker(cluster, "test-2").State == WorkerState.Cordoned ? "" : null, "the drain never happened once a replacement was idle");
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(4));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(new[] { Worker(cluster, "test-1").WorkerId, Worker(cluster, "test-3").WorkerId }.Order(), info.WorkerIds.Order());
        Assert.Equal(2, info.Generation);
        Assert.Empty(SampleLedger.Check(ProtoMapper.FromProto(cluster.Client.Ledger(new GetJobRequest { JobId = id })), 0, Steps));
    }

    [Fact]
    public async Task Draining_a_pipeline_stage_fails_its_job_naming_the_worker_and_the_worker_stays_up_cordoned()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(120));
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: 100_000);
        spec = spec with
        {
            Model = spec.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 16 },
            Training = spec.Training with { BatchSize = 8, SeqLen = 12 },
            Parallelism = new ParallelismSpec { Data = 1, Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        };
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(spec));
        await using var cluster = await InProcessCluster.StartAsync(2);
        // --workers 0 stands for D × K = 2 with parallelism.data set.
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 0)).JobId;
        Assert.Equal(2, cluster.Client.Get(new GetJobRequest { JobId = id }).WorkersRequested);
        await WaitForStep(cluster, id, 3);
        var victim = Worker(cluster, "test-1");
        var drain = Cli(cluster, tmp, "workers", "drain", "test-1");
        Assert.True(drain.ExitCode == 0, drain.ToString());
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"worker {victim.WorkerId} ({victim.Address}) was drained after step", info.Message);
        Assert.Contains("a pipeline job cannot go on without a stage", info.Message);
        var after = Worker(cluster, "test-1");
        Assert.Equal((victim.WorkerId, WorkerState.Cordoned), (after.WorkerId, after.State));
        Assert.Equal(WorkerState.Idle, Worker(cluster, "test-2").State);
    }

    [Fact]
    public async Task A_cordoned_worker_keeps_its_job_then_takes_none_and_remembers_the_cordon_when_it_registers_again()
    {
        var (tmp, path) = Job(steps: 100_000);
        using var _ = tmp;
        await using var cluster = await InProcessCluster.StartAsync(2);
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
        await WaitForStep(cluster, id, 5);
        var cordon = Cli(cluster, tmp, "workers", "cordon", "test-1");
        Assert.True(cordon.ExitCode == 0, cordon.ToString());
        Assert.Contains($"cordoned; it keeps {id} until that job ends", cordon.Stdout);
        var listed = Worker(cluster, "test-1");
        Assert.Equal((WorkerState.Training, true), (listed.State, listed.Cordoned));
        Assert.Contains("training, cordoned", Cli(cluster, tmp, "workers").Stdout);
        var step = cluster.Client.Get(new GetJobRequest { JobId = id }).Step;
        await WaitForStep(cluster, id, step + 20);

        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.Equal(JobState.Cancelled, info.State);
        Assert.Equal((1, 2), (info.Generation, info.WorkerIds.Count)); // it kept its job to the end
        var cordoned = await Eventually(() => Worker(cluster, "test-1") is { State: WorkerState.Cordoned } w ? w : null, "not cordoned after its job");
        Assert.Equal($"cordoned by cluster-admin; {id} ended", cordoned.Message);

        // The coordinator forgets it (as after a restart): it registers again, still cordoned — the worker remembers.
        cluster.Services.GetRequiredService<WorkerRegistry>().MarkLost(cordoned.WorkerId, "test: forget it");
        var back = await Eventually(() => cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.FirstOrDefault(w => w.Name == "test-1" && w.WorkerId != cordoned.WorkerId && w.State != WorkerState.Joining),
            "the forgotten worker did not register again");
        Assert.Equal((WorkerState.Cordoned, true), (back.State, back.Cordoned));
        var none = Cli(cluster, tmp, "workers", "drain", "nobody");
        Assert.Equal(2, none.ExitCode);
        Assert.Contains("no worker with id or name \"nobody\"", none.Stderr);
    }
}
