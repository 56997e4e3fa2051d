using System.Diagnostics;
using Dtrain.Checkpoints;
using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Distributed.Pipeline;
using Dtrain.Rpc;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Worker;

/// <summary>What one pipeline-stage step did on this worker.</summary>
public sealed record StageStepReport(double LossSum, long Count, int Rows, double SquaredNorm, double ComputeMs, double IdleMs, double ReduceMs);

/// <summary>
/// This worker's pipeline stage of a job: the stage, its links to the neighbouring stages, its schedule, and — with
/// several data-parallel replicas — the ring of the same stage of every replica, over which its gradients are summed.
/// A step is two calls: <see cref="RunAsync"/> (the schedule, the all-reduce, the squared norm) and, once the
/// coordinator has added every stage's norm, <see cref="Apply"/>. A stage cannot evaluate, hand over its whole state or
/// change membership: it refuses them (<paramref name="jobId"/>: the job its messages name).
/// </summary>
public sealed class StageWork(string jobId, PipelineStage stage, IStageLinkSet links, PipelineSchedule schedule, IGradientReducer reducer) : IWorkerJob, IAsyncDisposable
{
    private readonly GradientBuffer? gradients = reducer.WorldSize == 1 ? null : new GradientBuffer(stage.Parameters);
    private bool gradientsBound;

    public PipelineStage Stage { get; } = stage;

    /// <summary>What it sends over, for the activity and the metrics' transport label: its ring's transport and its stage links' ("shm", or "tcp, stages shm").</summary>
    public string Transport { get; } = CombinedTransport(reducer.Transport, links.Transport);

    /// <summary>Optional: the worker's live phase (forward, backward, pipeline receive from a neighbour, all-reduce).</summary>
    public WorkerActivity? Activity { get; init; }

    /// <summary>Worker ids of the previous and next stage ("" when none or unknown), named when this stage waits for them.</summary>
    public (string Previous, string Next) Neighbours { get; init; } = ("", "");
    /// <summary>The step whose gradients are accumulated and not yet applied (-1 = none).</summary>
    public long Pending { get; private set; } = -1;
    private double pendingNorm;

    /// <param name="inject">A deliberate non-finite loss (this stage's output: the loss, or the activation it sends on) or gradient at this step (<see cref="NonFiniteInjection"/>; tests and drills).</param>
    public async Task<StageStepReport> RunAsync(long step, BatchRows? rows, bool resetState, bool carryState, long globalCount, TorchThread torch, CancellationToken cancel, string? inject = null)
    {
        if (Pending >= 0) throw new InvalidOperationException($"step {step} started before step {Pending} was applied");
        var clock = Stopwatch.StartNew();
        if (resetState) await torch.RunAsync(Stage.ResetState).ConfigureAwait(false);
        var micro = schedule.MicroBatches;
        var batches = new List<Batch?>(micro);
        try
        {
            // Micro-batches of nearly equal rows; a short batch (or a replica without rows) leaves some empty.
            for (var m = 0; m < micro; m++)
            {
                var (start, count) = rows is null ? (0, 0) : BatchSourceExtensions.RowRange(rows.Rows, m, micro);
                batches.Add(count == 0 ? null : Batch.From(Slice(rows!, start, count)));
            }
            Stage.InjectNonFinite = inject == NonFiniteCauses.Loss;
            StageStepResult result;
            try
            {
                Activity?.Enter(ActivityPhases.Forward, newStep: step + 1);
                var stepLinks = Activity is { } activity ? new ObservedLinks(links.ForStep(step), activity, Neighbours) : links.ForStep(step);
                result = await StageRunner.RunStepAsync(Stage, schedule.PerStage[Stage.Plan.Stage], batches, stepLinks, carryState, cancel,
                    f => torch.RunAsync(f)).ConfigureAwait(false);
            }
            finally
            {
                Stage.InjectNonFinite = false;
            }
            if (inject == NonFiniteCauses.Gradient) await torch.RunAsync(() => TrainingEngine.PoisonGradient(Stage.Parameters)).ConfigureAwait(false);
            var computed = clock.Elapsed.TotalMilliseconds;
            if (gradients is not null)
            {
                // At the first sum, as every replica of this stage (the same step for all): memory the reducer gives,
                // e.g. registered with the shared-memory group so that the sums are zero-copy (null: keep our own).
                if (!gradientsBound)
                {
                    gradients.Bind(await reducer.AllocateBufferAsync(gradients.Length, cancel).ConfigureAwait(false));
                    gradientsBound = true;
                }
                await torch.RunAsync(gradients.Gather).ConfigureAwait(false);
                Activity?.Enter(ActivityPhases.AllReduce);
                await reducer.SumAsync(gradients.Values, step, cancel).ConfigureAwait(false);
                await torch.RunAsync(gradients.Scatter).ConfigureAwait(false);
            }
            var reduceMs = clock.Elapsed.TotalMilliseconds - computed;
            var norm = await torch.RunAsync(() => Stage.SquaredGradientNorm(globalCount)).ConfigureAwait(false);
            pendingNorm = norm;
            Pending = step;
            return new StageStepReport(result.LossSum, result.Count, rows?.Rows ?? 0, norm, result.ComputeMs, computed - result.ComputeMs, reduceMs);
        }
        finally
        {
            foreach (var b in batches) b?.Dispose();
        }
    }

    /// <summary>Refuses step <paramref name="step"/> while an earlier step is not applied (checked before the step's rows are taken).</summary>
    public void CheckTurn(long step)
    {
        if (Pending >= 0) throw new InvalidOperationException($"job {jobId}: step {step} started before step {Pending} was applied");
    }

    /// <summary>
    /// The second half of the step: the optimizer step clipped by the whole model's norm, or — when the coordinator saw
    /// a non-finite loss or gradient norm anywhere (<paramref name="skip"/>) — no step at all: the gradients are zeroed.
    /// </summary>
    public void Apply(long step, long globalCount, double lr, double globalNorm, bool skip = false)
    {
        if (Pending != step) throw new InvalidOperationException(Pending < 0 ? $"apply of step {step}, which has not run" : $"apply of step {step} while step {Pending} is pending");
        if (skip) Stage.Skip();
        else if (!double.IsFinite(pendingNorm))
            throw new InvalidOperationException($"apply of step {step}: this stage's gradient norm is {pendingNorm} (not finite), yet the step was not marked to skip");
        else Stage.Apply(globalCount, lr, globalNorm);
        Pending = -1;
    }

    /// <summary>
    /// <see cref="Apply"/> as the protocol asks it, on <paramref name="torch"/>; then the fault drill's non-finite
    /// parameters (<paramref name="poisonParameters"/>, <see cref="NonFiniteInjection"/>) and the checksum when asked.
    /// </summary>
    public async Task<ApplyResult> ApplyAsync(ApplyCommand command, bool poisonParameters, TorchThread torch)
    {
        await torch.RunAsync(() => Apply(command.Step, command.GlobalCount, command.Lr, command.GlobalNorm, command.Skip)).ConfigureAwait(false);
        if (poisonParameters) await torch.RunAsync(() => NonFiniteInjection.PoisonParameters(Stage.Parameters)).ConfigureAwait(false);
        return new ApplyResult(command.ReportChecksum ? await torch.RunAsync(ParameterChecksum).ConfigureAwait(false) : 0, command.Skip);
    }

    /// <summary>Rows [start, start + count) of a step: a language model's rows hold Width targets each, a classifier's one label.</summary>
    private static BatchRows Slice(BatchRows r, int start, int count)
    {
        var w = r.Width;
        var inputs = r.Inputs[(start * w)..((start + count) * w)];
        return r.Lengths is null
            ? new BatchRows(count, w, inputs, r.Targets[(start * w)..((start + count) * w)], null, (long)count * w)
            : new BatchRows(count, w, inputs, r.Targets[start..(start + count)], r.Lengths[start..(start + count)], count);
    }

    /// <summary>Reports waits for a neighbouring stage as "pipeline receive" (naming its worker), and the compute after them as forward or backward.</summary>
    private sealed class ObservedLinks(IStageLinks inner, WorkerActivity activity, (string Previous, string Next) neighbours) : IStageLinks
    {
        public Task SendActivationAsync(int micro, TorchSharp.torch.Tensor activation, CancellationToken cancel) => inner.SendActivationAsync(micro, activation, cancel);

        public Task SendGradientAsync(int micro, TorchSharp.torch.Tensor gradient, CancellationToken cancel) => inner.SendGradientAsync(micro, gradient, cancel);

        public async Task<TorchSharp.torch.Tensor> ReceiveActivationAsync(int micro, CancellationToken cancel)
        {
            activity.Enter(ActivityPhases.PipelineReceive, $"activation of micro-batch {micro + 1} from the previous stage", newWaitingOn: neighbours.Previous);
            var t = await inner.ReceiveActivationAsync(micro, cancel).ConfigureAwait(false);
            activity.Enter(ActivityPhases.Forward, $"micro-batch {micro + 1}");
            return t;
        }

        public async Task<TorchSharp.torch.Tensor> ReceiveGradientAsync(int micro, CancellationToken cancel)
        {
            activity.Enter(ActivityPhases.PipelineReceive, $"gradient of micro-batch {micro + 1} from the next stage", newWaitingOn: neighbours.Next);
            var t = await inner.ReceiveGradientAsync(micro, cancel).ConfigureAwait(false);
            activity.Enter(ActivityPhases.Backward, $"micro-batch {micro + 1}");
            return t;
        }
    }

    /// <summary>
    /// <see cref="RunAsync"/> as the protocol's step: its loss, rows, squared gradient norm and idle time (no checksum:
    /// the parameters change at <see cref="Apply"/>). A neighbouring stage gone is a <see cref="PeerFailureException"/>
    /// (a consequence: the coordinator names the worker that failed); a step out of turn or bad data, a refusal naming the job.
    /// </summary>
    public async Task<WorkStepReport> StepAsync(WorkStep step, TorchThread torch, CancellationToken cancel)
    {
        StageStepReport report;
        try
        {
            report = await RunAsync(step.Step, step.Rows, step.ResetState, step.CarryState, step.GlobalCount, torch, cancel, step.Inject).ConfigureAwait(false);
        }
        catch (Exception e) when (e is InvalidOperationException or InvalidDataException)
        {
            throw new InvalidOperationException($"job {jobId}: {e.Message}");
        }
        catch (IOException e)
        {
            throw new PeerFailureException(e.Message);
        }
        var reply = new StepResult
        {
            LossSum = report.LossSum, Count = report.Count, Rows = report.Rows, SquaredGradNorm = report.SquaredNorm,
            ComputeMs = report.ComputeMs, AllreduceMs = report.ReduceMs, IdleMs = report.IdleMs,
        };
        return new WorkStepReport(reply, 0, Transport);
    }

    public EvalSums Evaluate(ITrainingTask task, PreparedData data, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null) => throw NotWholeReplica();

    public CheckpointData CaptureState(JobSpec spec, ITokenizer tokenizer, LabelSet labels, TrainingState training) => throw NotWholeReplica();

    public void JoinRing(IGradientReducer reducer) => throw new InvalidOperationException($"job {jobId}: a pipeline stage cannot change membership");

    private InvalidOperationException NotWholeReplica() => new($"job {jobId}: this worker holds pipeline stage {Stage.Plan.Stage}, not a whole replica");

    private static string CombinedTransport(string ring, string stages) =>
        ring.Length == 0 ? stages : stages.Length == 0 || stages == ring ? ring : $"{ring}, stages {stages}";

    public double ParameterChecksum() => ParameterChecksums.Sum(Stage.Parameters);

    public void LoadParameters(IReadOnlyDictionary<string, ParameterTensor> tensors) =>
        ParameterTransfer.Load(Stage.NamedParameters(), (TorchSharp.Modules.OptimizerHelper)Stage.Optimizer, tensors);

    public async Task ReleaseAsync(TorchThread torch)
    {
        await DisposeAsync().ConfigureAwait(false);
        await torch.RunAsync(Stage.Dispose).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await links.DisposeAsync().ConfigureAwait(false);
        gradients?.Dispose();
    }
}
