using System.Diagnostics;
using System.Globalization;
using Dtrain.Cli;
using Dtrain.Cluster;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Elastic data-parallel jobs on real worker processes (faults injected by the test): a worker killed, hung or drained
/// mid-job, or one that joins, and the job finishes with the model it would have had, every sample once per epoch.
/// </summary>
public class ElasticTests
{
    const int Steps = 240;

    internal static readonly Dictionary<string, string> FastTimeouts = new()
    {
        ["DTRAIN_Coordinator__HeartbeatIntervalMs"] = "300",
        ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = "3",
        ["DTRAIN_Coordinator__StepTimeoutSeconds"] = "10",
        ["DTRAIN_Coordinator__WaitForWorkersSeconds"] = "20",
    };

    /// <summary><see cref="FastTimeouts"/> for a coordinator in the test process.</summary>
    internal static readonly CoordinatorOptions FastOptions = new()
    {
        HeartbeatIntervalMs = 300,
        WorkerTimeoutSeconds = 3,
        StepTimeoutSeconds = 10,
        WaitForWorkersSeconds = 20,
    };

    /// <summary>Random windows (no carried state), Adam, 12-row batches (split evenly over 2, 3 or 4 workers), validation at the end.</summary>
    static (TempDir Tmp, JobSpec Spec, string Path) Job()
    {
        var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: Steps);
        spec = spec with
        {
            Model = spec.Model with { HiddenSize = 48 },
            Training = spec.Training with { BatchSize = 12, SeqLen = 16, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 0 },
        };
        return (tmp, spec, tmp.Write("job.json", JobSpecSerializer.Serialize(spec)));
    }

    /// <summary>The fault-free run in one process: its final validation loss and its training loss at every step.</summary>
    static FaultFree FaultFreeLoss(TempDir tmp, JobSpec spec)
    {
        var steps = new StepLosses();
        var loss = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, steps, CancellationToken.None).Final!.Loss;
        return new FaultFree(loss, steps.Losses);
    }

    internal sealed record FaultFree(double Loss, IReadOnlyDictionary<long, double> StepLosses);

    sealed class StepLosses : ITrainingObserver
    {
        public readonly Dictionary<long, double> Losses = [];
        public void OnStep(Dtrain.Training.StepReport report) => Losses[report.Step] = report.Loss;
    }

    internal static async Task<long> WaitForStep(Jobs.JobsClient client, string id, long step)
    {
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (true)
        {
            var info = client.Get(new GetJobRequest { JobId = id });
            if (info.Step >= step) return info.Step;
            Assert.True(info.State is JobState.Queued or JobState.Preparing or JobState.Running, $"job {id} is {info.State}: {info.Message}");
            Assert.True(DateTime.UtcNow < deadline, $"job {id} did not reach step {step}");
            await Task.Delay(20);
        }
    }

    internal static async Task<JobInfo> WaitForEnd(Jobs.JobsClient client, string id)
    {
        var deadline = DateTime.UtcNow.AddMinutes(3);
        while (true)
        {
            var info = client.Get(new GetJobRequest { JobId = id });
            if (info.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled) return info;
            Assert.True(DateTime.UtcNow < deadline, $"job {id} still {info.State} at step {info.Step}: {info.Message}");
            await Task.Delay(100);
        }
    }

    static string IdOfWorker(Jobs.JobsClient client, int index) =>
        client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == $"worker-{index + 1}" && w.State != WorkerState.Lost).WorkerId;

    /// <summary>Every step committed once, every row of every step trained by exactly one worker.</summary>
    static LedgerReply AssertLedger(Jobs.JobsClient client, string id, long steps = Steps)
    {
        var ledger = client.Ledger(new GetJobRequest { JobId = id });
        var problems = SampleLedger.Check(ProtoMapper.FromProto(ledger), 0, steps);
        Assert.True(problems.Count == 0, string.Join("; ", problems.Take(10)));
        return ledger;
    }

    /// <summary>
    /// Within 2 % of the fault-free run's validation loss, or within <paramref name="absolute"/> nats of it when that is
    /// larger. A re-forming changes only the order of the gradient's floating-point sums (which rows each worker sums), and
    /// that difference grows: measured in process (1, 2 or 3 workers, one drained and let back at various steps), every
    /// run of this 240-step job ended at the fault-free validation loss to 5 decimals, no step's training loss 0.1 % off;
    /// every run of it at 1000 steps left the fault-free training loss by more than 0.1 % between steps 423 and 478, and
    /// 38 such runs ended 0.00001 to 0.0035 nats (up to 7.8 %) from the fault-free validation loss. Hence the tests here
    /// run 240 steps and hold the job (<see cref="StepHold"/>) where they need it to last. On failure the message names the first
    /// step whose training loss left the fault-free run's (with its neighbours' losses) and the job's generations from
    /// its ledger, to tell a lost or repeated step from drift.
    /// </summary>
    static void AssertLoss(FaultFree faultFree, JobInfo info, Jobs.JobsClient client, double absolute = 0)
    {
        var difference = Math.Abs(info.LastEval.Loss - faultFree.Loss);
        var relative = difference / faultFree.Loss;
        if (relative <= 0.02 || difference <= absolute) return;
        var history = client.History(new GetJobRequest { JobId = info.JobId });
        var steps = history.Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step).ToList();
        var first = steps.FirstOrDefault(e => faultFree.StepLosses.TryGetValue(e.Step, out var l) && Math.Abs(e.Loss - l) > 1e-3 * Math.Max(1, Math.Abs(l)));
        // Where the job re-formed, from its ledger (History holds only step and evaluation events, not the job's log lines);
        // counted from 1 as the losses are (the ledger's step k is the loss's step k + 1).
        var reforms = client.Ledger(new GetJobRequest { JobId = info.JobId }).Steps
            .GroupBy(x => x.Generation)
            .Select(g => $"generation {g.Key}: steps {g.Min(x => x.Step) + 1}-{g.Max(x => x.Step) + 1} on {string.Join(", ", g.First().Shares.Select(x => x.WorkerId))}");
        // The training losses around the first step that left the fault-free run's (drift grows smoothly; a lost, doubled or stale step jumps).
        var around = first is null ? "" : " (steps " + string.Join(", ", steps.Where(e => Math.Abs(e.Step - first.Step) <= 3 && faultFree.StepLosses.ContainsKey(e.Step))
            .Select(e => $"{e.Step}: {e.Loss:F5} vs {faultFree.StepLosses[e.Step]:F5}")) + ")";
        Assert.Fail($"validation loss {info.LastEval.Loss:F4} vs fault-free {faultFree.Loss:F4}: {relative:P2} ({difference:F4} nats; allowed 2 %{(absolute > 0 ? $" or {absolute} nats" : "")}); " +
            (first is null ? "every step's training loss within 0.1 % of the fault-free run's" : $"the training loss first left the fault-free run's at step {first.Step}: {first.Loss:F5} vs {faultFree.StepLosses[first.Step]:F5}{around}") +
            $"; the job's generations: {string.Join(" | ", reforms)}");
    }

    [Fact]
    public async Task Killing_one_of_three_workers_mid_job_loses_no_step_and_ends_with_the_fault_free_loss()
    {
        var (tmp, spec, _) = Job();
        using var _ = tmp;
        var faultFree = FaultFreeLoss(tmp, spec);
        // The coordinator holds the job at step `at` until the victim is dead: a 240-step job of this size runs in a
        // second or two, and a kill sent when the test saw step `at` could land after the job had ended (CI saw it:
        // succeeded in generation 1, the kill too late to matter).
        var at = new Random(7).Next(20, 60);
        var hold = new StepHold(at);
        await using var held = await HeldCluster.StartAsync(tmp, hold, 3, FastOptions);
        var (workers, client) = (held.Workers, held.Client);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(tmp.Write("kill.json", JobSpecSerializer.Serialize(spec with { Data = spec.Data with { Train = Path.Combine(tmp.Path, "t.txt") } }))), 3)).JobId;
        var heldAt = await WaitForStep(client, id, at);
        Assert.Equal(at, heldAt);
        var victim = IdOfWorker(client, 1);
        workers.Kill(1);
        hold.Release();

        var info = await WaitForEnd(client, id);
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(Steps, info.Step);
        Assert.True(info.Generation >= 2, $"generation {info.Generation}");
        Assert.DoesNotContain(victim, info.WorkerIds);
        Assert.Equal(2, info.WorkerIds.Count);
        AssertLoss(faultFree, info, client);
        var ledger = AssertLedger(client, id);
        // The victim trained its share of every step before the kill, the survivors the whole batch of every step after it.
        Assert.All(ledger.Steps.Where(s => s.Step < at), s => Assert.Contains(s.Shares, x => x.WorkerId == victim));
        Assert.All(ledger.Steps.Where(s => s.Step >= at), s => Assert.Equal(2, s.Shares.Count));
    }

    [Fact]
    public async Task A_dataset_job_replaces_a_killed_worker_with_a_new_one_and_trains_every_sample_once_to_the_fault_free_loss()
    {
        // Issue 23's check: a job from a prepared dataset (the workers read their rows themselves) keeps the ledger
        // intact when a worker process is killed mid-job and another one is started. --min-workers 3 makes the job
        // wait for the replacement (state waiting) instead of ending on 2, so the new worker trains for certain.
        var (tmp, spec, _) = Job();
        using var __ = tmp;
        // The data root holds only datasets: the coordinator refuses one that holds its own data directory.
        var root = Path.Combine(tmp.Path, "datasets");
        var dataset = DatasetJobTests.Prepare(spec, Path.Combine(tmp.Path, "t.txt"), Path.Combine(root, "ds"));
        var path = tmp.Write("dataset.json", JobSpecSerializer.Serialize(DatasetJobTests.DatasetJob(spec, dataset)));
        var faultFree = FaultFreeLoss(tmp, spec);
        // Held at step `at` until the victim is dead and its replacement started: the kill lands mid-job (see the killing test).
        var at = new Random(11).Next(20, 60);
        var hold = new StepHold(at);
        // WaitForWorkersSeconds: only a bound on how long a new worker process may take to register on a slow machine.
        await using var held = await HeldCluster.StartAsync(tmp, hold, 3, FastOptions with { DataRoots = [root], WaitForWorkersSeconds = 300 });
        var (workers, client) = (held.Workers, held.Client);
        var request = JobCommands.BuildSubmit(client, new FileInfo(path), 3);
        (request.MinWorkers, request.MaxWorkers) = (3, 3);
        var id = client.Submit(request).JobId;
        Assert.Equal(at, await WaitForStep(client, id, at));
        var victim = IdOfWorker(client, 1);
        workers.Kill(1);
        workers.Add();
        hold.Release();

        var info = await WaitForEnd(client, id);
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(Steps, info.Step);
        Assert.DoesNotContain(victim, info.WorkerIds);
        var joiner = IdOfWorker(client, 3);
        Assert.Contains(joiner, info.WorkerIds);
        Assert.Equal(3, info.WorkerIds.Count);
        var ledger = AssertLedger(client, id);
        Assert.Contains(ledger.Steps, s => s.Shares.Any(x => x.WorkerId == victim));
        Assert.Contains(ledger.Steps, s => s.Shares.Any(x => x.WorkerId == joiner));
        AssertLoss(faultFree, info, client);
        Assert.True(info.Generation >= 2, $"generation {info.Generation}");
    }

    [Fact]
    public async Task A_worker_started_mid_job_is_admitted_within_two_steps_and_the_replicas_stay_identical()
    {
        var (tmp, spec, _) = Job();
        using var __ = tmp;
        var faultFree = FaultFreeLoss(tmp, spec);
        // The coordinator sends no step after step 20 until the worker process started then has registered: it joins
        // mid-job whatever the machine's speed. (This test used to run 1000 steps instead, so that the job would likely
        // last; near zero loss, the order of sums then moves the final loss by up to 0.0035 nats: see AssertLoss.)
        const int at = 20;
        var hold = new StepHold(at + 1);
        await using var held = await HeldCluster.StartAsync(tmp, hold, 2, FastOptions);
        var (workers, client) = (held.Workers, held.Client);
        var request = JobCommands.BuildSubmit(client, new FileInfo(tmp.Write("join.json", JobSpecSerializer.Serialize(spec with { Data = spec.Data with { Train = Path.Combine(tmp.Path, "t.txt") } }))), 2);
        request.MaxWorkers = 3;
        var id = client.Submit(request).JobId;
        await WaitForStep(client, id, at);
        workers.Add();
        // When the new worker is idle (registered), note the step: it must train from at most two steps later.
        long idleAt;
        var until = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            var w = client.ListWorkers(new ListWorkersRequest()).Workers.SingleOrDefault(x => x.Name == "worker-3");
            if (w is { State: WorkerState.Idle or WorkerState.Training }) { idleAt = client.Get(new GetJobRequest { JobId = id }).Step; break; }
            Assert.True(DateTime.UtcNow < until, "the worker started mid-job did not register");
            await Task.Delay(10);
        }
        Assert.True(idleAt <= at + 1, $"the job went past the held step {at + 1}: at step {idleAt}");
        hold.Release();
        var info = await WaitForEnd(client, id);
        // Success includes the replicas' checksums agreeing every 25 steps and at the end.
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(3, info.WorkerIds.Count);
        var joiner = IdOfWorker(client, 2);
        var ledger = AssertLedger(client, id);
        var firstWithJoiner = ledger.Steps.Where(s => s.Shares.Any(x => x.WorkerId == joiner)).Min(s => s.Step);
        Assert.True(firstWithJoiner <= idleAt + 2, $"idle at step {idleAt}, first trained step {firstWithJoiner}");
        AssertLoss(faultFree, info, client);
    }

    [Fact]
    public async Task A_stopped_worker_is_evicted_the_job_goes_on_and_once_continued_it_is_fenced_and_registers_again()
    {
        var (tmp, spec, _) = Job();
        using var __ = tmp;
        var faultFree = FaultFreeLoss(tmp, spec);
        // The coordinator sends no step after step `at` until the stopped worker has been evicted, fenced, continued and
        // has registered again: the survivors still hold the job when the test asks one of them, and the worker, back,
        // rejoins the job at the next step boundary — whatever the machine's speed. (This test used to run 1000 steps
        // instead, so that the job would likely last; near zero loss, the order of sums then moved the final loss by up to
        // 0.0013 nats between runs that differ only in when they re-formed, and CI once saw 0.0058.)
        const int at = 20;
        var hold = new StepHold(at + 1);
        await using var held = await HeldCluster.StartAsync(tmp, hold, 3, FastOptions);
        var (workers, client) = (held.Workers, held.Client);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(tmp.Write("stop.json", JobSpecSerializer.Serialize(spec with { Data = spec.Data with { Train = Path.Combine(tmp.Path, "t.txt") } }))), 3)).JobId;
        // Step `at` (counted from 0) is sent, running or done; the next one is held.
        await WaitForStep(client, id, at);
        var victim = IdOfWorker(client, 2);
        var pid = workers.ProcessId(2).ToString(CultureInfo.InvariantCulture);
        Process.Start("kill", ["-STOP", pid])!.WaitForExit();
        try
        {
            // Evicted after the heartbeat timeout; the job goes on with two.
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (client.Get(new GetJobRequest { JobId = id }).Generation < 2)
            {
                Assert.True(DateTime.UtcNow < deadline, "the stopped worker was not evicted");
                await Task.Delay(50);
            }
            var after = client.Get(new GetJobRequest { JobId = id });
            Assert.DoesNotContain(victim, after.WorkerIds);
            Assert.True(after.State == JobState.Running && after.Step <= at + 1, $"the job went past the held step {at + 1}: {after.State} at step {after.Step}");
            // A survivor refuses a step of the old generation.
            var survivor = client.ListWorkers(new ListWorkersRequest()).Workers.First(w => w.WorkerId == after.WorkerIds[0]);
            using (var workerChannel = Remote.Channel(survivor.Address))
            {
                var stale = Assert.Throws<RpcException>(() => new Dtrain.Protos.Worker.WorkerControl.WorkerControlClient(workerChannel)
                    .RunStep(new Dtrain.Protos.Worker.RunStepRequest { JobId = id, Step = after.Step + 5, Lr = 0.01, GlobalCount = 1, Generation = 1 }));
                Assert.Equal(StatusCode.FailedPrecondition, stale.StatusCode);
                Assert.Contains("generation", stale.Status.Detail);
            }
        }
        finally
        {
            Process.Start("kill", ["-CONT", pid])!.WaitForExit();
        }
        // Continued, it learns it was dropped (its heartbeat is refused) and registers again under a new id.
        var until = DateTime.UtcNow.AddSeconds(60);
        while (!client.ListWorkers(new ListWorkersRequest()).Workers.Any(w => w.Name == "worker-3" && w.WorkerId != victim && w.State is WorkerState.Idle or WorkerState.Training))
        {
            Assert.True(DateTime.UtcNow < until, "the continued worker did not register again");
            await Task.Delay(100);
        }
        var back = IdOfWorker(client, 2);
        hold.Release();
        var info = await WaitForEnd(client, id);
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.True(info.Generation >= 3, $"generation {info.Generation}");
        Assert.Contains(back, info.WorkerIds);
        var ledger = AssertLedger(client, id);
        // It rejoined with the state of the others (a peer's, checked by checksum) and trained its share to the end.
        Assert.Contains(ledger.Steps, s => s.Shares.Any(x => x.WorkerId == back));
        AssertLoss(faultFree, info, client);
    }

    [Fact]
    public async Task A_worker_drained_during_a_step_leaves_at_the_step_boundary_and_no_step_is_lost()
    {
        var (tmp, spec, _) = Job();
        using var __ = tmp;
        var faultFree = FaultFreeLoss(tmp, spec);
        await using var cluster = await InProcessCluster.StartAsync(3);
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("job2.json", JobSpecSerializer.Serialize(spec with { Data = spec.Data with { Train = Path.Combine(tmp.Path, "t.txt") } }))), 3)).JobId;
        await WaitForStep(cluster.Client, id, 30);
        await cluster.StopWorkerAsync(1); // SIGTERM's path: finish the step, leave, release
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(2, info.WorkerIds.Count);
        Assert.True(info.Generation >= 2);
        AssertLedger(cluster.Client, id);
        AssertLoss(faultFree, info, cluster.Client);
    }

    [Fact]
    public async Task Below_the_minimum_the_job_waits_visibly_and_fails_after_the_timeout_naming_the_worker()
    {
        var (tmp, _, path) = Job();
        using var __ = tmp;
        // Held at step 10 until the victim is dead: the kill lands mid-job (see the killing test).
        var hold = new StepHold(10);
        await using var held = await HeldCluster.StartAsync(tmp, hold, 2, FastOptions with { WaitForWorkersSeconds = 4 });
        var (workers, client) = (held.Workers, held.Client);
        var request = JobCommands.BuildSubmit(client, new FileInfo(path), 2);
        request.MinWorkers = 2;
        var id = client.Submit(request).JobId;
        Assert.Equal(10, await WaitForStep(client, id, 10));
        var victim = IdOfWorker(client, 1);
        workers.Kill(1);
        hold.Release();
        var deadline = DateTime.UtcNow.AddSeconds(60);
        JobInfo seen;
        while ((seen = client.Get(new GetJobRequest { JobId = id })).State != JobState.Waiting)
        {
            Assert.True(DateTime.UtcNow < deadline && seen.State == JobState.Running, $"never waiting: {seen.State} {seen.Message}");
            await Task.Delay(20);
        }
        Assert.Matches(@"waiting for 1 more worker\(s\), \d+ s left", seen.Message);
        var info = await WaitForEnd(client, id);
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains("fewer than the minimum of 2", info.Message);
        Assert.Contains(victim, info.Message);
    }

    [Fact]
    public async Task Over_mutual_tls_a_joining_worker_takes_a_peers_state_worker_to_worker()
    {
        var (tmp, spec, _) = Job();
        using var __ = tmp;
        using var pki = new Dtrain.Tests.Security.TestPki();
        await using var cluster = await InProcessCluster.StartAsync(0, pki: pki);
        // The first worker holds step 30 until the joiner is registered, so the job cannot end before it may join
        // (a 240-step job of this size ends in about a second; on a loaded machine the joiner can take longer).
        var joinerRegistered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<GatedStep>(30L, joinerRegistered.Task)));
        await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var request = JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("tls.json", JobSpecSerializer.Serialize(spec with { Data = spec.Data with { Train = Path.Combine(tmp.Path, "t.txt") } }))), 2);
        request.MaxWorkers = 3;
        var id = cluster.Client.Submit(request).JobId;
        await WaitForStep(cluster.Client, id, 20);
        await cluster.AddWorkerAsync();
        var until = DateTime.UtcNow.AddSeconds(60);
        while (cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Count(w => w.State is WorkerState.Idle or WorkerState.Training) < 3)
        {
            Assert.True(DateTime.UtcNow < until, "the joiner did not register");
            await Task.Delay(20);
        }
        Assert.True(cluster.Client.Get(new GetJobRequest { JobId = id }).Step <= 30, "the job went past the held step");
        joinerRegistered.SetResult();
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(3, info.WorkerIds.Count);
        Assert.True(info.Generation >= 2);
        AssertLedger(cluster.Client, id);
    }

    sealed class NullObserver : ITrainingObserver;

    /// <summary>Holds RunStep of step <paramref name="at"/> (0-based) until <paramref name="open"/> completes; other steps and calls run on.</summary>
    sealed class GatedStep(long at, Task open) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is Dtrain.Protos.Worker.RunStepRequest step && step.Step == at)
                await open.WaitAsync(context.CancellationToken);
            return await continuation(request, context);
        }
    }
}

/// <summary>
/// Holds a job at a step: the coordinator (in the test process, <see cref="Install"/>ed into it)
/// sends no worker step <see cref="At"/> or a later one until <see cref="Release"/> — so a fault the test injects meanwhile
/// lands mid-job whatever the machine's speed. The job's step stands at <see cref="At"/> while held.
/// </summary>
internal sealed class StepHold(long at)
{
    private readonly TaskCompletionSource released = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public long At { get; } = at;

    public void Release() => released.TrySetResult();

    /// <summary>Makes the coordinator reach its workers through handles that hold the steps (a coordinator service replacement for <see cref="InProcessCluster.StartAsync"/>).</summary>
    public void Install(IServiceCollection services) =>
        services.AddSingleton(sp =>
        {
            var (options, clients, clock) = (sp.GetRequiredService<CoordinatorOptions>(), sp.GetRequiredService<WorkerClients>(), sp.GetRequiredService<TimeProvider>());
            return new JobRunner(options, sp.GetRequiredService<WorkerRegistry>(), clients, clock, sp.GetRequiredService<Microsoft.Extensions.Logging.ILogger<JobRunner>>(),
                w => new Held(new GrpcWorkerHandle(w, clients, options, clock), this));
        });

    private sealed class Held(IWorkerHandle inner, StepHold hold) : IWorkerHandle
    {
        public WorkerRecord Worker => inner.Worker;

        public async Task<StepResult> RunStepAsync(StepCommand command, double timeoutSeconds, CancellationToken cancel)
        {
            // The step's deadline starts when it is sent, after the hold.
            if (command.Step >= hold.At) await hold.released.Task.WaitAsync(cancel).ConfigureAwait(false);
            return await inner.RunStepAsync(command, timeoutSeconds, cancel).ConfigureAwait(false);
        }

        public Task<AssignResult> AssignAsync(Assignment assignment, CancellationToken cancel) => inner.AssignAsync(assignment, cancel);
        public Task LoadShardsAsync(string jobId, ShardSlice slice, long step, CancellationToken cancel) => inner.LoadShardsAsync(jobId, slice, step, cancel);
        public Task<ApplyResult> ApplyStepAsync(ApplyCommand command, double timeoutSeconds, CancellationToken cancel) => inner.ApplyStepAsync(command, timeoutSeconds, cancel);
        public Task<EvalSums> EvaluateAsync(Dtrain.Cluster.EvalCommand command, long step, CancellationToken cancel) => inner.EvaluateAsync(command, step, cancel);
        public Task<byte[]> GetStateAsync(StateSnapshot snapshot, CancellationToken cancel) => inner.GetStateAsync(snapshot, cancel);
        public Task<IReadOnlyList<ParameterTensor>> GetStageParametersAsync(StateSnapshot snapshot, CancellationToken cancel) => inner.GetStageParametersAsync(snapshot, cancel);
        public Task<LoadStateResult> LoadStateAsync(string jobId, IEnumerable<ParameterTensor> tensors, long step, CancellationToken cancel) => inner.LoadStateAsync(jobId, tensors, step, cancel);
        public Task<StepStanding> AbortAsync(string jobId, long generation, string reason, CancellationToken cancel) => inner.AbortAsync(jobId, generation, reason, cancel);
        public Task ReconfigureAsync(RingMembership membership, CancellationToken cancel) => inner.ReconfigureAsync(membership, cancel);
        public Task<SyncResult> SyncStateAsync(SyncSource source, CancellationToken cancel) => inner.SyncStateAsync(source, cancel);
        public Task ReleaseAsync(string jobId, string reason, double timeoutSeconds, CancellationToken cancel) => inner.ReleaseAsync(jobId, reason, timeoutSeconds, cancel);
    }
}

/// <summary>
/// A coordinator in the test process whose worker steps a <see cref="StepHold"/> holds, with <c>count</c> real
/// `dtrain worker` processes (<see cref="WorkerProcesses"/>) registered and idle; disposing kills the processes, then
/// stops the coordinator.
/// </summary>
internal sealed class HeldCluster : IAsyncDisposable
{
    private HeldCluster(InProcessCluster cluster, WorkerProcesses workers) => (Cluster, Workers) = (cluster, workers);

    public InProcessCluster Cluster { get; }
    public WorkerProcesses Workers { get; }
    public Jobs.JobsClient Client => Cluster.Client;

    public static async Task<HeldCluster> StartAsync(TempDir tmp, StepHold hold, int count, CoordinatorOptions options)
    {
        var cluster = await InProcessCluster.StartAsync(0, options, hold.Install);
        WorkerProcesses? workers = null;
        try
        {
            workers = new WorkerProcesses(tmp, cluster.Address, count);
            await cluster.WaitForIdleAsync(count, TimeSpan.FromMinutes(2));
            return new HeldCluster(cluster, workers);
        }
        catch
        {
            workers?.Dispose();
            await cluster.DisposeAsync();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        Workers.Dispose();
        await Cluster.DisposeAsync();
    }
}

/// <summary>
/// `dtrain worker` processes (worker-1, worker-2, ...) registered with a coordinator at <c>address</c> (one in the test
/// process: <see cref="InProcessCluster"/>), each one torch thread, logging to TMP/worker-N.log; all killed on dispose.
/// </summary>
internal sealed class WorkerProcesses : IDisposable
{
    private readonly List<Process> processes = [];

    private readonly TempDir tmp;
    private readonly string address;

    public WorkerProcesses(TempDir tmp, string address, int count)
    {
        (this.tmp, this.address) = (tmp, address);
        for (var n = 1; n <= count; n++) Add();
    }

    /// <summary>Starts one more worker process (worker-N, N counting from 1).</summary>
    public void Add()
    {
        var n = processes.Count + 1;
        var psi = CliRunner.StartInfo(tmp.Path, null, "worker", "--coordinator", address, "--threads", "1", "--name", $"worker-{n}");
        Dtrain.Runtime.NativeAllocator.Preload(psi);
        var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start worker-{n}");
        var log = new StreamWriter(Path.Combine(tmp.Path, $"worker-{n}.log"), append: true) { AutoFlush = true };
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        processes.Add(p);
    }

    /// <summary>Process id of worker <paramref name="index"/> (0-based; worker-(index+1)), e.g. to stop it with SIGSTOP as a hang would.</summary>
    public int ProcessId(int index) => processes[index].Id;

    /// <summary>Kills worker <paramref name="index"/> (0-based; worker-(index+1)) with SIGKILL, as a crash would, and waits until it is gone.</summary>
    public void Kill(int index)
    {
        processes[index].Kill(entireProcessTree: true);
        Assert.True(processes[index].WaitForExit(TimeSpan.FromSeconds(30)), $"worker-{index + 1} (pid {processes[index].Id}) still runs 30 s after SIGKILL");
    }

    public void Dispose()
    {
        foreach (var p in processes)
        {
            try
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.WaitForExit(5000);
            }
            catch (InvalidOperationException)
            {
                // Already gone.
            }
            p.Dispose();
        }
    }
}

/// <summary>A cluster of worker processes on loopback (ElasticTests' fast timeouts unless <c>env</c> says otherwise) and a client of its coordinator: the set-up the elastic and restart tests share.</summary>
internal sealed class Processes : IDisposable
{
    private readonly Grpc.Net.Client.GrpcChannel channel;
    public LocalCluster Cluster { get; }
    public Jobs.JobsClient Client { get; }

    public Processes(TempDir tmp, int workers, IDictionary<string, string>? env = null)
    {
        Cluster = LocalCluster.Start(workers, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), env ?? ElasticTests.FastTimeouts);
        channel = Remote.Channel(Cluster.Address);
        Client = new Jobs.JobsClient(channel);
    }

    /// <summary>Submits the spec at <paramref name="path"/> on <paramref name="workers"/> workers (and the given minimum and maximum); returns its id.</summary>
    public string Submit(string path, int workers, int min = 0, int max = 0)
    {
        var request = JobCommands.BuildSubmit(Client, new FileInfo(path), workers);
        request.MinWorkers = min;
        request.MaxWorkers = max;
        return Client.Submit(request).JobId;
    }

    public void Dispose()
    {
        channel.Dispose();
        Cluster.Dispose();
    }
}

/// <summary>training.max_restarts: a job that cannot go on restarts by itself from its newest checkpoint.</summary>
public class RestartTests
{
    [Fact]
    public async Task A_pipeline_that_loses_a_stage_restarts_from_its_checkpoint_on_the_remaining_workers_and_ends_as_if_uninterrupted()
    {
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm(text, steps: 300);
        spec = spec with
        {
            Model = spec.Model with { Layers = 2, HiddenSize = 48 },
            Training = spec.Training with { BatchSize = 8, SeqLen = 16, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 20, MaxRestarts = 1 },
            Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        };
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(spec));
        // The coordinator (in the test process, three real worker processes) sends no step >= 30 until the victim is dead:
        // the kill lands after the checkpoint of step 20 and before the job ends whatever the machine's speed (a kill sent
        // when the test saw a checkpoint could land after the 300 steps had ended).
        const int at = 30;
        var hold = new StepHold(at);
        await using var held = await HeldCluster.StartAsync(tmp, hold, 3, ElasticTests.FastOptions);
        var (cluster, workers, client) = (held.Cluster, held.Workers, held.Client);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId;
        Assert.Equal(at, await ElasticTests.WaitForStep(client, id, at));
        JobInfo info;
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while ((info = client.Get(new GetJobRequest { JobId = id })).Checkpoint == "")
        {
            Assert.True(DateTime.UtcNow < deadline && info.State == JobState.Running, $"no checkpoint at step {info.Step}: {info.State} {info.Message}");
            await Task.Delay(20);
        }
        Assert.Equal(at, info.Step);
        var victim = info.WorkerIds[1];
        var index = client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.WorkerId == victim).Name switch { "worker-1" => 0, "worker-2" => 1, _ => 2 };
        workers.Kill(index);
        hold.Release();
        info = await ElasticTests.WaitForEnd(client, id);
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(1, info.Restarts);
        Assert.DoesNotContain(victim, info.WorkerIds);
        using var trained = Dtrain.Inference.TrainedModel.Load(cluster.CheckpointFile(info));

        // The same job without a fault, on the two workers left: the reference (a pipeline is deterministic; a restart replays it exactly).
        var clean = await ElasticTests.WaitForEnd(client, client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId);
        Assert.True(clean.State == JobState.Succeeded, $"{clean.State}: {clean.Message}");
        Assert.Equal(0, clean.Restarts);
        using var reference = Dtrain.Inference.TrainedModel.Load(cluster.CheckpointFile(clean));
        var relative = Support.ParameterDiff.MaxRelative(reference.Engine.Parameters, trained.Engine.Parameters);
        Assert.True(relative <= 1e-6, $"restarted vs uninterrupted pipeline: max |dp| / max |p| = {relative:E2}");
    }

    [Fact]
    public async Task Without_restarts_left_the_job_fails_and_with_them_a_restart_shows_in_status()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: 100_000);
        spec = spec with { Training = spec.Training with { BatchSize = 8, EvalInterval = 0, CheckpointInterval = 5, MaxRestarts = 0 } };
        var env = new Dictionary<string, string> { ["DTRAIN_Coordinator__HeartbeatIntervalMs"] = "300", ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = "3", ["DTRAIN_Coordinator__WaitForWorkersSeconds"] = "1" };
        using var processes = new Processes(tmp, 2, env);
        var (cluster, client) = (processes.Cluster, processes.Client);
        var id = processes.Submit(tmp.Write("a.json", JobSpecSerializer.Serialize(spec)), 2, min: 2);
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (client.Get(new GetJobRequest { JobId = id }).Step < 10) { Assert.True(DateTime.UtcNow < deadline); await Task.Delay(20); }
        cluster.KillWorker(1);
        JobInfo info;
        while ((info = client.Get(new GetJobRequest { JobId = id })).State is not (JobState.Failed or JobState.Succeeded or JobState.Cancelled)) { Assert.True(DateTime.UtcNow < deadline); await Task.Delay(50); }
        Assert.Equal(JobState.Failed, info.State);
        Assert.Equal(0, info.Restarts);
    }

    sealed class NullObserver : ITrainingObserver;

    /// <summary>Holds RunStep of step <paramref name="at"/> (0-based) until <paramref name="open"/> completes; other steps and calls run on.</summary>
    sealed class GatedStep(long at, Task open) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is Dtrain.Protos.Worker.RunStepRequest step && step.Step == at)
                await open.WaitAsync(context.CancellationToken);
            return await continuation(request, context);
        }
    }
}
