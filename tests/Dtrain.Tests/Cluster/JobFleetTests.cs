using Dtrain.Cluster;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// An elastic job's fleet and the data-parallel driver without gRPC or processes: real worker runtimes behind
/// in-process handles, a real registry, the faults chosen by the test at a chosen step. A worker lost, one added, one
/// drained: the job re-forms at a step boundary and ends with the model a single process trains, every step committed once.
/// </summary>
public class JobFleetTests
{
    const int Steps = 24;

    /// <summary>Random windows (no carried state), Adam, 12-row batches (split evenly over 2 or 3 workers), validation at the end.</summary>
    static (TempDir Tmp, JobSpec Spec) Job()
    {
        var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: Steps);
        spec = spec with
        {
            Model = spec.Model with { HiddenSize = 32 },
            Training = spec.Training with { BatchSize = 12, SeqLen = 16, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 0 },
        };
        return (tmp, spec);
    }

    static double SingleProcessLoss(TempDir tmp, JobSpec spec) =>
        Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None).Final!.Loss;

    /// <summary>A coordinator's registry and job, and a pool of in-process workers registered with it.</summary>
    sealed class Fleet : IAsyncDisposable
    {
        public readonly CoordinatorOptions Options;
        public readonly WorkerRegistry Registry;
        public readonly InMemoryWorkerPool Pool;
        public readonly Dictionary<string, string> IdOf = [];

        public Fleet(double waitForWorkersSeconds = 30)
        {
            Options = new() { WorkerTimeoutSeconds = 2, WaitForWorkersSeconds = waitForWorkersSeconds, FailureBlameGraceSeconds = 1 };
            Registry = new WorkerRegistry(Options, TimeProvider.System, NullLogger<WorkerRegistry>.Instance);
            Pool = new InMemoryWorkerPool(Options);
        }

        /// <summary>Starts a worker, registers it and sends its first heartbeat (it is idle).</summary>
        public WorkerRecord Start(string name)
        {
            Pool.Add(name);
            var record = Registry.Register(new WorkerRegistration(InMemoryWorkerPool.AddressOf(name), name, WorkerCapabilities.Unknown with { Cores = 1 }));
            Assert.True(Registry.Heartbeat(record.Id, record.Token));
            IdOf[name] = record.Id;
            return record;
        }

        public InProcessWorkerHandle Handle(string name) => Pool.Connect(Registry.Snapshot().Single(w => w.Id == IdOf[name]));

        public ValueTask DisposeAsync() => Pool.DisposeAsync();
    }

    static async Task<JobRecord> RunAsync(Fleet fleet, JobSpec spec, string dir, int workers, int min, int max, Action<JobRecord>? started = null, TimeProvider? clock = null)
    {
        var job = new JobRecord("job-0001", spec with { Output = dir }, dir, workers, DateTimeOffset.UtcNow);
        job.Transition(JobTrigger.Start, "preparing data");
        var reserved = fleet.Registry.TryReserve(workers, job.Id);
        Assert.NotNull(reserved);
        started?.Invoke(job);
        var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);
        using var jobFleet = new JobFleet(job, reserved, min, max, fleet.Registry, fleet.Pool.Connect, fleet.Options, NullLogger.Instance, clock);
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await new DataParallelDriver(fleet.Options).RunAsync(job, prepared, jobFleet, timeout.Token);
        return job;
    }

    /// <summary>Every step committed once, every row of it trained by exactly one worker; the members of each step.</summary>
    static IReadOnlyList<LedgerEntry> AssertLedger(JobRecord job)
    {
        var ledger = job.Ledger.Snapshot();
        var problems = SampleLedger.Check(ledger, 0, Steps);
        Assert.True(problems.Count == 0, string.Join("; ", problems.Take(10)));
        return ledger;
    }

    static void AssertLoss(double single, JobRecord job)
    {
        var loss = job.Progress.LastEval?.Loss ?? double.NaN;
        Assert.True(Math.Abs(loss - single) <= 0.02 * single, $"validation loss {loss:F4} vs single process {single:F4}");
    }

    [Fact]
    public async Task A_worker_lost_mid_step_is_dropped_and_the_others_finish_with_the_single_process_loss()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b", "c" }) fleet.Start(n);
        // Worker b dies as step 8 starts: its call fails as unreachable, its ring neighbours as peers of a dead one.
        fleet.Handle("b").BeforeStep = step =>
        {
            if (step.Step != 8) return true;
            fleet.Pool.StopAsync("b").GetAwaiter().GetResult();
            return false;
        };

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 3, min: 2, max: 3);

        var info = job.Progress;
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.Equal([fleet.IdOf["a"], fleet.IdOf["c"]], info.WorkerIds);
        Assert.Equal(MembershipState.Lost, fleet.Registry.StateOf(fleet.IdOf["b"]));
        var ledger = AssertLedger(job);
        // Step 7 ran beside step 8 (a window of two): it was committed by all three, or lost with b and committed again without it.
        var reformed = ledger.First(s => s.Generation == 2).Step;
        Assert.InRange(reformed, 7, 8);
        Assert.All(ledger.Where(s => s.Step < reformed), s => Assert.Equal((3, 1L), (s.Shares.Count, s.Generation)));
        Assert.All(ledger.Where(s => s.Step >= reformed), s => Assert.Equal((2, 2L), (s.Shares.Count, s.Generation)));
        Assert.DoesNotContain(ledger.Where(s => s.Step >= reformed), s => s.Shares.Any(x => x.WorkerId == fleet.IdOf["b"]));
        AssertLoss(single, job);
    }

    [Fact]
    public async Task Rank_0_lost_during_the_final_evaluation_the_others_evaluate_and_the_job_ends_with_the_single_process_loss()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b", "c" }) fleet.Start(n);
        // Rank 0 (a) dies as it starts the evaluation after the last step: every step is committed, the evaluation is not.
        var evaluations = 0;
        fleet.Handle("a").BeforeEvaluate = step =>
        {
            Interlocked.Increment(ref evaluations);
            if (step != Steps) return true;
            fleet.Pool.StopAsync("a").GetAwaiter().GetResult();
            return false;
        };

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 3, min: 2, max: 3);

        var info = job.Progress;
        Assert.Equal(1, evaluations);
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.Equal([fleet.IdOf["b"], fleet.IdOf["c"]], info.WorkerIds);
        Assert.All(AssertLedger(job), s => Assert.Equal(1L, s.Generation));
        Assert.NotNull(info.LastEval);
        AssertLoss(single, job);
    }

    [Fact]
    public async Task A_non_zero_rank_lost_during_the_final_evaluation_the_others_evaluate_again_and_the_job_ends_with_the_single_process_loss()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b", "c" }) fleet.Start(n);
        // Rank 1 (b) dies as it starts its part of the evaluation after the last step; a and c evaluate theirs, which do
        // not count: the new generation (a and c) evaluates the whole split again.
        var evaluations = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        foreach (var n in new[] { "a", "b", "c" })
        {
            var name = n;
            fleet.Handle(n).BeforeEvaluate = step =>
            {
                evaluations.AddOrUpdate(name, 1, (_, k) => k + 1);
                if (name != "b" || step != Steps) return true;
                fleet.Pool.StopAsync("b").GetAwaiter().GetResult();
                return false;
            };
        }

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 3, min: 2, max: 3);

        var info = job.Progress;
        Assert.Equal(1, evaluations["b"]);
        Assert.InRange(evaluations["a"], 1, 2);
        Assert.InRange(evaluations["c"], 1, 2);
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.Equal([fleet.IdOf["a"], fleet.IdOf["c"]], info.WorkerIds);
        Assert.All(AssertLedger(job), s => Assert.Equal(1L, s.Generation));
        Assert.NotNull(info.LastEval);
        AssertLoss(single, job);
    }

    [Theory]
    [InlineData("a")]
    [InlineData("b")]
    public async Task A_worker_lost_during_a_mid_job_evaluation_the_new_generation_does_that_evaluation_first_and_every_one_appears_once(string lost)
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        // Evaluations after steps 8, 16 and 24.
        spec = spec with { Training = spec.Training with { EvalInterval = 8 } };
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b", "c" }) fleet.Start(n);
        // The lost worker dies as it starts its part of the evaluation after step 8.
        var evaluated = new System.Collections.Concurrent.ConcurrentQueue<(string Worker, long Step)>();
        foreach (var n in new[] { "a", "b", "c" })
        {
            var name = n;
            fleet.Handle(n).BeforeEvaluate = step =>
            {
                evaluated.Enqueue((name, step));
                if (name != lost || step != 8) return true;
                fleet.Pool.StopAsync(name).GetAwaiter().GetResult();
                return false;
            };
        }

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 3, min: 2, max: 3);

        var info = job.Progress;
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.DoesNotContain(fleet.IdOf[lost], info.WorkerIds);
        // Every scheduled evaluation appears once in the job's metrics, the one after step 8 included.
        Assert.Equal([8L, 16L, 24L], job.History().OfType<JobNotice.Eval>().Select(e => e.AtStep));
        // The survivors evaluated step 8 again, in the new generation, before step 9 ran.
        var survivors = new[] { "a", "b", "c" }.Where(n => n != lost).ToArray();
        Assert.All(survivors, n => Assert.Equal(2, evaluated.Count(e => e.Worker == n && e.Step == 8)));
        Assert.All(AssertLedger(job), s => Assert.Equal(s.Step < 8 ? 1L : 2L, s.Generation));
    }

    [Fact]
    public async Task Every_rank_evaluates_its_part_and_the_job_s_evaluation_is_one_process_s_evaluation_of_its_model()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        // 10 validation streams (batch_size 10) over 3 ranks: 3, 3 and 4 streams.
        spec = spec with { Training = spec.Training with { BatchSize = 10 } };
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b", "c" }) fleet.Start(n);
        var evaluations = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        foreach (var n in new[] { "a", "b", "c" })
        {
            var name = n;
            fleet.Handle(n).BeforeEvaluate = _ => { evaluations.AddOrUpdate(name, 1, (_, k) => k + 1); return true; };
        }
        var dir = Path.Combine(tmp.Path, "job");

        var job = await RunAsync(fleet, spec, dir, 3, min: 3, max: 3);

        Assert.Equal(Steps, job.Progress.Step);
        Assert.Equal(new Dictionary<string, int> { ["a"] = 1, ["b"] = 1, ["c"] = 1 }, evaluations.ToDictionary());
        // The job's final checkpoint (its model after the last step) evaluated by one process.
        var checkpoint = Directory.GetFiles(dir, "*.dtck", SearchOption.AllDirectories).Max()!;
        using var model = Dtrain.Inference.TrainedModel.Load(checkpoint);
        var task = Dtrain.Training.Tasks.TrainingTasks.For(model.Spec);
        var one = task.Evaluate(model.Engine, PreparedData.Load(model.Spec, tmp.Path, model.Tokenizer, null), spec.Training.BatchSize, 0);
        var eval = job.Progress.LastEval!;
        Assert.Equal(one.Count, eval.Count);
        Assert.True(Math.Abs(eval.Loss - one.Loss) <= 1e-6 * one.Loss, $"the job's loss {eval.Loss:R} vs one process {one.Loss:R}");
        Assert.True(Math.Abs(eval.Perplexity!.Value - one.Perplexity!.Value) <= 1e-6 * one.Perplexity.Value);
    }

    [Fact]
    public async Task A_worker_that_registers_mid_job_joins_at_a_step_boundary_and_takes_the_state_of_a_member()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b" }) fleet.Start(n);
        // Worker c registers while step 6 runs.
        fleet.Handle("a").BeforeStep = step =>
        {
            if (step.Step == 6) fleet.Start("c");
            return true;
        };

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 2, min: 2, max: 3);

        var info = job.Progress;
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.Equal([fleet.IdOf["a"], fleet.IdOf["b"], fleet.IdOf["c"]], info.WorkerIds);
        var ledger = AssertLedger(job);
        var joined = ledger.First(s => s.Shares.Count == 3).Step;
        // Admitted within two steps of registering (the step in flight, and the one queued behind it).
        Assert.InRange(joined, 7, 9);
        Assert.All(ledger.Where(s => s.Step >= joined), s => Assert.Contains(s.Shares, x => x.WorkerId == fleet.IdOf["c"]));
        AssertLoss(single, job);
    }

    [Fact]
    public async Task A_joiner_assigned_but_not_yet_given_the_state_when_the_re_forming_fails_takes_it_in_the_next_one()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        var a = fleet.Start("a");
        fleet.Start("b");
        // Worker c registers while step 6 runs and is admitted; as it is about to take a's state (a is the source: rank 0,
        // at the committed step), a goes away (its process stops; it said so, as on SIGTERM, for the registry to tell the job). The re-forming fails half way and is made again with b and c: c was assigned
        // (its replica stands at the committed step, with the parameters it was built with) but never took the state.
        var failedOnce = 0;
        fleet.Handle("a").BeforeStep = step =>
        {
            if (step.Step != 6) return true;
            fleet.Start("c");
            fleet.Handle("c").BeforeSync = source =>
            {
                if (Interlocked.Exchange(ref failedOnce, 1) == 1) return true;
                Assert.Equal(fleet.IdOf["a"], source.Source.WorkerId);
                fleet.Pool.StopAsync("a").GetAwaiter().GetResult();
                fleet.Registry.Leave(a.Id, a.Token, "the test: a went away while c took its state");
                return false;
            };
            return true;
        };

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 2, min: 2, max: 3);

        // Success includes the replicas' checksums agreeing every 25 steps and at the end: c took b's state in the next re-forming.
        var info = job.Progress;
        Assert.Equal(1, failedOnce);
        Assert.Equal(Steps, info.Step);
        Assert.Equal([fleet.IdOf["b"], fleet.IdOf["c"]], info.WorkerIds);
        var ledger = AssertLedger(job);
        Assert.Contains(ledger, s => s.Shares.Any(x => x.WorkerId == fleet.IdOf["c"]));
        AssertLoss(single, job);
    }

    [Fact]
    public async Task A_drained_worker_leaves_at_a_step_boundary_while_the_minimum_stays_and_is_cordoned_not_lost()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b", "c" }) fleet.Start(n);
        fleet.Handle("a").BeforeStep = step =>
        {
            if (step.Step == 5) fleet.Registry.Cordon(fleet.IdOf["c"], drain: true, by: "test");
            return true;
        };

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 3, min: 2, max: 3);

        var info = job.Progress;
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.Equal([fleet.IdOf["a"], fleet.IdOf["b"]], info.WorkerIds);
        var drained = fleet.Registry.Snapshot().Single(w => w.Id == fleet.IdOf["c"]);
        Assert.NotEqual(MembershipState.Lost, drained.State);
        Assert.True(drained.Cordoned);
        Assert.Equal("", drained.JobId);
        var ledger = AssertLedger(job);
        Assert.All(ledger.Where(s => s.Step >= 8), s => Assert.Equal(2, s.Shares.Count));
        AssertLoss(single, job);
    }

    [Fact]
    public async Task Below_the_minimum_with_no_idle_worker_the_job_fails_naming_the_lost_worker()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        await using var fleet = new Fleet(waitForWorkersSeconds: 1);
        foreach (var n in new[] { "a", "b" }) fleet.Start(n);
        fleet.Handle("b").BeforeStep = step =>
        {
            if (step.Step != 3) return true;
            fleet.Pool.StopAsync("b").GetAwaiter().GetResult();
            return false;
        };
        var options = fleet.Options;

        var e = await Assert.ThrowsAsync<JobFailure>(() => RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 2, min: 2, max: 2));

        Assert.True(e.Terminal);
        Assert.StartsWith($"fewer than the minimum of 2 worker(s) for {options.WaitForWorkersSeconds:F0}s after worker {fleet.IdOf["b"]} (", e.Message);
        // Named by its failed step, or by the abort it could not answer (when a peer's failure was heard first).
        Assert.Contains("the in-process worker", e.Message);
    }

    [Fact]
    public async Task Below_the_minimum_the_job_takes_a_worker_as_soon_as_it_registers_not_at_its_next_look()
    {
        var (tmp, spec) = Job();
        using var _ = tmp;
        var single = SingleProcessLoss(tmp, spec);
        await using var fleet = new Fleet();
        foreach (var n in new[] { "a", "b" }) fleet.Start(n);
        fleet.Handle("b").BeforeStep = step =>
        {
            if (step.Step != 3) return true;
            fleet.Pool.StopAsync("b").GetAwaiter().GetResult();
            return false;
        };
        // The fleet's clock never moves: a wait that looked again after a while on it would never end (and never time
        // out); only the registration of worker c can wake the job waiting below its minimum of 2.
        var frozen = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        JobRecord? running = null;
        var joiner = Task.Run(async () =>
        {
            var deadline = DateTime.UtcNow.AddMinutes(2);
            JobRecord? seen;
            while ((seen = Volatile.Read(ref running)) is not { Status: JobStatus.Waiting })
            {
                Assert.True(DateTime.UtcNow < deadline, $"the job never waited for workers: {seen?.Status} {seen?.Progress.Message}");
                await Task.Delay(10);
            }
            Assert.Equal($"waiting for 1 more worker(s), {fleet.Options.WaitForWorkersSeconds:F0} s left", seen.Progress.Message);
            fleet.Start("c");
        });

        var job = await RunAsync(fleet, spec, Path.Combine(tmp.Path, "job"), 2, min: 2, max: 2, started: j => Volatile.Write(ref running, j), clock: frozen);
        await joiner;

        var info = job.Progress;
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.Generation);
        Assert.Equal([fleet.IdOf["a"], fleet.IdOf["c"]], info.WorkerIds);
        AssertLedger(job);
        AssertLoss(single, job);
    }

    sealed class NullObserver : ITrainingObserver;
}
