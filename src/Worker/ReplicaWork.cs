using Dtrain.Checkpoints;
using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Worker;

/// <summary>This worker's whole-model replica of a data-parallel job: its model, optimizer and gradient reducer.</summary>
public sealed class ReplicaWork(DataParallelReplica replica) : IWorkerJob
{
    public DataParallelReplica Replica { get; } = replica;

    public double ParameterChecksum() => Replica.ParameterChecksum();

    public void LoadParameters(IReadOnlyDictionary<string, ParameterTensor> tensors)
    {
        var engine = Replica.Engine;
        ParameterTransfer.Load(engine.Model.named_parameters().Select(p => (p.name, p.parameter)), (TorchSharp.Modules.OptimizerHelper)engine.Optimizer, tensors);
    }

    /// <summary>A replica takes any step: the coordinator orders them.</summary>
    public void CheckTurn(long step) { }

    /// <summary>The whole step: compute, the gradients summed over the ring (with the loss, in one more value), the optimizer step or — when the sum is not finite — none.</summary>
    public async Task<WorkStepReport> StepAsync(WorkStep step, TorchThread torch, CancellationToken cancel)
    {
        var result = await Replica.StepAsync(step.Rows, step.ResetState, step.CarryState, step.GlobalCount, step.Lr, step.Step, cancel, torch, step.Inject).ConfigureAwait(false);
        if (step.Inject == NonFiniteInjection.Parameters) await torch.RunAsync(() => NonFiniteInjection.PoisonParameters(Replica.Engine.Parameters)).ConfigureAwait(false);
        var reply = new StepResult
        {
            LossSum = result.LossSum,
            Count = result.Count,
            Rows = result.Rows,
            GradNorm = result.GradNorm,
            ParameterChecksum = step.ReportChecksum ? await torch.RunAsync(Replica.ParameterChecksum).ConfigureAwait(false) : 0,
            ComputeMs = result.ComputeMs,
            AllreduceMs = result.ReduceMs,
            Skipped = result.Skipped,
            NonFinite = result.NonFinite ?? "",
        };
        return new WorkStepReport(reply, Replica.ParameterCount + 1, Replica.Reducer.Transport);
    }

    public EvalSums Evaluate(ITrainingTask task, PreparedData data, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null) =>
        task.EvaluatePart(Replica.Engine, data, batchSize, maxBatches, part, progress);

    public CheckpointData CaptureState(JobSpec spec, ITokenizer tokenizer, LabelSet labels, TrainingState training) =>
        TrainingCheckpoint.Capture(spec, tokenizer, labels, training, Replica.Engine);

    /// <summary>Replaces the replica's parameters, optimizer and RNG state with <paramref name="data"/> (a peer's, from <paramref name="source"/>) and forgets the carried hidden state; returns the new checksum. On the torch thread.</summary>
    public double TakeState(CheckpointData data, string source)
    {
        TrainingCheckpoint.Restore(data, source, Replica.Engine, withOptimizer: true);
        Replica.Engine.ResetState();
        return Replica.ParameterChecksum();
    }

    public void JoinRing(IGradientReducer reducer)
    {
        Replica.Reducer = reducer;
        // The rows each replica holds change with the world: a carried hidden state belongs to the old rows.
        Replica.Engine.ResetState();
    }

    public Task ReleaseAsync(TorchThread torch) => torch.RunAsync(Replica.Dispose);
}
