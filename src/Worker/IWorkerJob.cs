using Dtrain.Checkpoints;
using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Worker;

/// <summary>
/// What a worker holds of its job: a whole data-parallel replica (<see cref="ReplicaWork"/>) or one pipeline stage
/// (<see cref="StageWork"/>). Each runs a step, evaluates, captures its state and joins a new ring in its own way, or
/// refuses what its kind cannot do (an <see cref="InvalidOperationException"/> naming the job: the same refusal the
/// protocol has always given). Its torch work runs on the job's torch thread.
/// </summary>
public interface IWorkerJob
{
    /// <summary>The sum of its parameters (the same on every replica of the model, or of the stage).</summary>
    double ParameterChecksum();

    /// <summary>Replaces its parameters and their optimizer state with <paramref name="tensors"/> (whole-model names).</summary>
    void LoadParameters(IReadOnlyDictionary<string, ParameterTensor> tensors);

    /// <summary>
    /// Runs step <paramref name="step"/> on its rows, its torch work on <paramref name="torch"/>: a replica computes,
    /// sums its gradients with its peers and takes the optimizer step; a stage runs its schedule with its neighbours
    /// and keeps its gradients until <see cref="StageWork.Apply"/>. A cancelled step throws
    /// <see cref="OperationCanceledException"/> (the caller says why).
    /// </summary>
    Task<WorkStepReport> StepAsync(WorkStep step, TorchThread torch, CancellationToken cancel);

    /// <summary>
    /// Refuses step <paramref name="step"/> before its rows are taken when it may not run yet (a stage whose previous
    /// step is not applied), so a retry of the step still finds its rows; a replica takes any step.
    /// </summary>
    void CheckTurn(long step);

    /// <summary>
    /// Evaluates the model on part <paramref name="part"/> of <paramref name="data"/>'s validation split as
    /// <paramref name="task"/> does (on the torch thread), telling <paramref name="progress"/> the batches done after each one; a pipeline stage, which holds part
    /// of the model, refuses.
    /// </summary>
    EvalSums Evaluate(ITrainingTask task, PreparedData data, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null);

    /// <summary>
    /// Its training state in the checkpoint format (the model, optimizer and RNG state with <paramref name="training"/>),
    /// on the torch thread; a pipeline stage refuses (its parameters are gathered by GetStageParameters).
    /// </summary>
    CheckpointData CaptureState(JobSpec spec, ITokenizer tokenizer, LabelSet labels, TrainingState training);

    /// <summary>
    /// Enters a new membership generation (on the torch thread): its gradients are summed over <paramref name="reducer"/>
    /// from now on, and a carried hidden state (which belonged to the old rows) is forgotten. A pipeline stage refuses.
    /// </summary>
    void JoinRing(IGradientReducer reducer);

    /// <summary>Frees what it holds (links, buffers), then its torch state on <paramref name="torch"/>.</summary>
    Task ReleaseAsync(TorchThread torch);
}
