using System.Reflection;
using Dtrain.Cluster;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Which worker a failed call on every rank blames (<see cref="JobWorkers"/>): the one that could not be reached or
/// missed its deadline, else the one that failed on its own, never a peer that only saw the failure — also when the
/// peers' reports arrive first. Each worker's answer is scripted (the failures built by the one translation of a
/// worker's status, <see cref="WorkerCallFailure"/>); the last test drives real worker runtimes behind in-process handles.
/// </summary>
public class JobWorkersBlameTests
{
    const long Step = 5;

    static WorkerRecord Record(int rank) => InMemoryJobWorkers.Record($"w{rank}");

    /// <summary>What a worker's call does: fails with the status after a delay, or (null status) waits until it is cancelled.</summary>
    public sealed record Script(StatusCode? Status, int DelayMs = 0)
    {
        public bool Cancelled { get; set; }
    }

    /// <summary>A handle whose RunStepAsync follows a script; nothing else is called by these tests.</summary>
    public class ScriptedHandle : DispatchProxy
    {
        internal WorkerRecord Worker = null!;
        internal Script Script = null!;

        public static IWorkerHandle Create(WorkerRecord worker, Script script)
        {
            var handle = Create<IWorkerHandle, ScriptedHandle>();
            var proxy = (ScriptedHandle)(object)handle;
            (proxy.Worker, proxy.Script) = (worker, script);
            return handle;
        }

        protected override object? Invoke(MethodInfo? method, object?[]? args) => method!.Name switch
        {
            "get_Worker" => Worker,
            nameof(IWorkerHandle.RunStepAsync) => RunStepAsync((StepCommand)args![0]!, (double)args[1]!, (CancellationToken)args[2]!),
            _ => throw new NotSupportedException(method.Name),
        };

        private async Task<StepResult> RunStepAsync(StepCommand command, double timeoutSeconds, CancellationToken cancel)
        {
            try
            {
                if (Script.Status is not { } status)
                {
                    await Task.Delay(Timeout.Infinite, cancel);
                    throw new InvalidOperationException("unreachable");
                }
                await Task.Delay(Script.DelayMs, cancel);
                throw WorkerCallFailure.From(new RpcException(new Status(status, $"scripted {status}")), Worker, "step", command.Step, timeoutSeconds, cancel);
            }
            catch (OperationCanceledException)
            {
                Script.Cancelled = true;
                throw;
            }
        }
    }

    static async Task<(JobFailure Failure, TimeSpan Took)> RunAsync(double graceSeconds, params Script[] scripts)
    {
        var workers = new JobWorkers([.. scripts.Select((s, rank) => ScriptedHandle.Create(Record(rank), s))], new CoordinatorOptions { FailureBlameGraceSeconds = graceSeconds });
        var started = DateTime.UtcNow;
        var e = await Assert.ThrowsAsync<JobFailure>(() => workers.RunStepAsync(new StepCommand("job-0001", Step, 0.1, 12), 2, CancellationToken.None));
        return (e, DateTime.UtcNow - started);
    }

    [Fact]
    public async Task A_dead_worker_is_blamed_although_its_peers_reported_the_failure_first()
    {
        // Its neighbours' rings broke first (Aborted: a peer failed); the coordinator's own call to it fails later.
        var (e, _) = await RunAsync(graceSeconds: 60, new(StatusCode.Aborted), new(StatusCode.Unavailable, DelayMs: 200), new(StatusCode.Aborted, DelayMs: 50));

        Assert.Equal("w1", e.Unreachable?.Id);
        Assert.StartsWith("worker w1 (", e.Message);
        Assert.Contains("unreachable during step at step 5", e.Message);
    }

    [Fact]
    public async Task A_worker_that_missed_its_deadline_is_blamed_over_one_that_failed_on_its_own()
    {
        var (e, _) = await RunAsync(graceSeconds: 60, new(StatusCode.Internal, DelayMs: 50), new(StatusCode.Aborted), new(StatusCode.DeadlineExceeded, DelayMs: 100));

        Assert.Equal("w2", e.Unreachable?.Id);
        Assert.StartsWith("worker w2 (", e.Message);
        Assert.Contains("did not finish step at step 5 within 2s", e.Message);
    }

    [Fact]
    public async Task A_worker_that_failed_on_its_own_is_blamed_not_the_peers_that_saw_it()
    {
        Script[] scripts = [new(StatusCode.Aborted), new(StatusCode.Aborted, DelayMs: 20), new(StatusCode.Internal, DelayMs: 100)];

        var (e, _) = await RunAsync(graceSeconds: 60, scripts);

        Assert.Null(e.Unreachable);
        Assert.False(e.PeerFailure);
        Assert.StartsWith("worker w2 (", e.Message);
        Assert.Contains("failed step at step 5: Internal: scripted Internal", e.Message);
    }

    [Fact]
    public async Task When_only_peers_report_a_failure_the_first_report_is_the_failure_after_the_grace_period()
    {
        // The dead worker's own call never returns: after the grace period the others are cancelled and the peer's report stands.
        Script[] scripts = [new(null), new(StatusCode.Aborted, DelayMs: 20), new(null)];

        var (e, took) = await RunAsync(graceSeconds: 0.5, scripts);

        Assert.True(e.PeerFailure);
        Assert.StartsWith("worker w1 (", e.Message);
        Assert.True(scripts[0].Cancelled && scripts[2].Cancelled);
        Assert.True(took >= TimeSpan.FromSeconds(0.5), $"blamed after {took.TotalSeconds:F2} s, before the grace period of 0.5 s");
    }

    [Fact]
    public async Task A_worker_runtime_that_stops_mid_step_is_blamed_by_the_driver_not_its_ring_neighbours()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: 8);
        spec = spec with { Training = spec.Training with { BatchSize = 6, SeqLen = 12, EvalInterval = 0, CheckpointInterval = 0 } };
        var dir = Path.Combine(tmp.Path, "job");
        var job = new JobRecord("job-0001", spec with { Output = dir }, dir, 3, DateTimeOffset.UtcNow);
        job.Transition(JobTrigger.Start, "preparing data");
        await using var workers = new InMemoryJobWorkers(3);
        // Rank 1 answers nothing from step 4 on (its process died as the step began); ranks 0 and 2 wait for it in the ring.
        ((InProcessWorkerHandle)workers.Handles[1]).BeforeStep = step => step.Step < 4;
        var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);

        var e = await Assert.ThrowsAsync<JobFailure>(() => new DataParallelDriver(new CoordinatorOptions()).RunAsync(job, prepared, workers, CancellationToken.None));

        Assert.Equal("mem1", e.Unreachable?.Id);
        Assert.StartsWith("worker mem1 (", e.Message);
        Assert.Contains("at step 4", e.Message);
        Assert.InRange(job.Progress.Step, 3, 4); // step 3 (0-based) ran beside step 4
    }
}
