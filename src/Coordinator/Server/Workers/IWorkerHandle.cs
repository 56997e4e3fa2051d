using Dtrain.Cluster;

namespace Dtrain.Server;

/// <summary>
/// One worker as the coordinator drives it, in the protocol's own terms (<see cref="Dtrain.Cluster"/>): over gRPC in a
/// cluster (<see cref="GrpcWorkerHandle"/>), or in process in tests. Every call that fails throws a
/// <see cref="JobFailure"/> naming the worker, what it was doing and the step — <see cref="JobFailure.Unreachable"/>
/// when it could not be reached or missed its deadline, <see cref="JobFailure.PeerFailure"/> when it reports that a
/// peer failed, <see cref="JobFailure.UnknownJob"/> when it does not hold the job — or
/// <see cref="OperationCanceledException"/> when the caller cancelled.
/// </summary>
public interface IWorkerHandle
{
    WorkerRecord Worker { get; }

    Task<AssignResult> AssignAsync(Assignment assignment, CancellationToken cancel);
    /// <summary>Sends the worker its rows (and validation split) of the steps from <paramref name="step"/> on.</summary>
    Task LoadShardsAsync(string jobId, ShardSlice slice, long step, CancellationToken cancel);
    Task<StepResult> RunStepAsync(StepCommand command, double timeoutSeconds, CancellationToken cancel);
    /// <summary>Pipeline jobs: the second half of a step.</summary>
    Task<ApplyResult> ApplyStepAsync(ApplyCommand command, double timeoutSeconds, CancellationToken cancel);
    /// <summary>The worker's part of an evaluation (<see cref="EvalCommand.Part"/>): its sums, combined over the ranks by the caller.</summary>
    Task<Training.EvalSums> EvaluateAsync(EvalCommand command, long step, CancellationToken cancel);
    /// <summary>The worker's training state (a checkpoint's bytes).</summary>
    Task<byte[]> GetStateAsync(StateSnapshot snapshot, CancellationToken cancel);
    /// <summary>Pipeline jobs: a stage's parameters (and optimizer state) under their whole-model names.</summary>
    Task<IReadOnlyList<ParameterTensor>> GetStageParametersAsync(StateSnapshot snapshot, CancellationToken cancel);
    /// <summary>Resumed jobs: the parameters and optimizer state the worker holds, after Assign.</summary>
    Task<LoadStateResult> LoadStateAsync(string jobId, IEnumerable<ParameterTensor> tensors, long step, CancellationToken cancel);
    /// <summary>Elastic jobs: stops the worker's steps before generation <paramref name="generation"/>; where it stands.</summary>
    Task<StepStanding> AbortAsync(string jobId, long generation, string reason, CancellationToken cancel);
    /// <summary>Elastic jobs: joins the ring of a new generation.</summary>
    Task ReconfigureAsync(RingMembership membership, CancellationToken cancel);
    /// <summary>Elastic jobs: takes the state of a peer that stands at the committed step.</summary>
    Task<SyncResult> SyncStateAsync(SyncSource source, CancellationToken cancel);
    /// <summary>Lets the worker go from the job, within <paramref name="timeoutSeconds"/>.</summary>
    Task ReleaseAsync(string jobId, string reason, double timeoutSeconds, CancellationToken cancel);
}
