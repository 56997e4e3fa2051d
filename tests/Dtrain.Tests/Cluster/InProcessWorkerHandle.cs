using Dtrain.Cluster;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Worker;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A worker reached in process: the real <see cref="WorkerRuntime"/> (what the gRPC service adapts) called directly
/// with the protocol's domain types (no wire form),
/// its exceptions turned into the status codes the server interceptor gives them and then into the job failures the
/// gRPC handle raises (<see cref="WorkerCallFailure"/>). Deadlines hold as over gRPC; a call the caller cancels returns
/// at once while the worker finishes or abandons it on its own. A stopped worker (<paramref name="stopped"/>) answers
/// nothing, as one whose process died: every call fails as unreachable.
/// </summary>
public sealed class InProcessWorkerHandle(WorkerRecord worker, WorkerRuntime runtime, Func<bool> stopped, CoordinatorOptions options) : IWorkerHandle
{
    public WorkerRecord Worker { get; } = worker;

    /// <summary>Called before a step is run (the step, whether it runs): a test's fault at a chosen moment.</summary>
    public Func<StepCommand, bool>? BeforeStep { get; set; }

    private async Task<T> Call<T>(string what, long step, double timeoutSeconds, CancellationToken cancel, Func<CancellationToken, Task<T>> call)
    {
        Exception failure;
        try
        {
            if (stopped()) throw new RpcException(new Status(StatusCode.Unavailable, "connection refused (the in-process worker is stopped)"));
            return await call(cancel).WaitAsync(TimeSpan.FromSeconds(timeoutSeconds), cancel).ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            failure = e;
        }
        catch (Exception e)
        {
            var code = ServerInterceptor.CodeOf(e, cancel.IsCancellationRequested);
            failure = new RpcException(new Status(code, code == StatusCode.Internal ? ErrorText.FirstLine(e.Message) : e.Message));
        }
        // A worker that stopped during the call did not answer it.
        if (stopped() && failure is RpcException { StatusCode: not StatusCode.Unavailable }) failure = new RpcException(new Status(StatusCode.Unavailable, "connection reset (the in-process worker stopped)"));
        throw WorkerCallFailure.From((RpcException)failure, Worker, what, step, timeoutSeconds, cancel);
    }

    public Task<AssignResult> AssignAsync(Assignment assignment, CancellationToken cancel) =>
        Call("assign", 0, options.CallTimeoutSeconds, cancel, ct => runtime.AssignAsync(assignment, ct));

    public Task LoadShardsAsync(string jobId, ShardSlice slice, long step, CancellationToken cancel) =>
        Call("load shard", step, options.CallTimeoutSeconds, cancel, ct => runtime.LoadShardAsync(jobId, (Empty(slice) ? [] : new[] { slice }).ToAsyncEnumerable(), ct));

    /// <summary>Nothing to send (over gRPC: no message).</summary>
    private static bool Empty(ShardSlice slice) => slice.Steps.Count == 0 && slice.ValidationTokens.Length == 0 && slice.ValidationExamples.Count == 0 && slice.ValidationTotal is null;

    public Task<StepResult> RunStepAsync(StepCommand command, double timeoutSeconds, CancellationToken cancel) =>
        Call("step", command.Step, timeoutSeconds, cancel, async ct =>
        {
            if (BeforeStep is { } hook && !hook(command)) throw new RpcException(new Status(StatusCode.Unavailable, "the in-process worker stopped before the step"));
            return await runtime.RunStepAsync(command, ct);
        });

    public Task<ApplyResult> ApplyStepAsync(ApplyCommand command, double timeoutSeconds, CancellationToken cancel) =>
        Call("apply step", command.Step, timeoutSeconds, cancel, ct => runtime.ApplyStepAsync(command, ct));

    public Task<Dtrain.Training.EvalSums> EvaluateAsync(EvalCommand command, long step, CancellationToken cancel) =>
        Call("evaluate", step, options.CallTimeoutSeconds, cancel, async ct =>
        {
            if (BeforeEvaluate is { } hook && !hook(step)) throw new RpcException(new Status(StatusCode.Unavailable, "the in-process worker stopped before the evaluation"));
            return await runtime.EvaluateAsync(command, ct);
        });

    /// <summary>Called before an evaluation after step (1-based) <c>step</c> runs (whether it runs): a test's fault at a chosen moment.</summary>
    public Func<long, bool>? BeforeEvaluate { get; set; }

    public Task<byte[]> GetStateAsync(StateSnapshot snapshot, CancellationToken cancel) =>
        Call("checkpoint", snapshot.Step, options.CallTimeoutSeconds, cancel, ct => runtime.GetStateAsync(snapshot, ct));

    public Task<IReadOnlyList<ParameterTensor>> GetStageParametersAsync(StateSnapshot snapshot, CancellationToken cancel) =>
        Call("checkpoint", snapshot.Step, options.CallTimeoutSeconds, cancel, async ct => (IReadOnlyList<ParameterTensor>)await runtime.GetStageParametersAsync(snapshot, ct));

    public Task<LoadStateResult> LoadStateAsync(string jobId, IEnumerable<ParameterTensor> tensors, long step, CancellationToken cancel) =>
        Call("load the checkpoint's state", step, options.CallTimeoutSeconds, cancel, ct =>
            runtime.LoadStateAsync(jobId, tensors.Select(t => (ParameterTensor?)t).ToAsyncEnumerable(), ct));

    public Task<StepStanding> AbortAsync(string jobId, long generation, string reason, CancellationToken cancel) =>
        Call("abort", 0, options.CallTimeoutSeconds, cancel, _ => runtime.AbortAsync(jobId, generation, reason));

    public Task ReconfigureAsync(RingMembership membership, CancellationToken cancel) =>
        Call("re-form the ring", 0, options.CallTimeoutSeconds, cancel, async ct => { await runtime.ReconfigureAsync(membership, ct); return true; });

    public Task<SyncResult> SyncStateAsync(SyncSource source, CancellationToken cancel) =>
        Call("take a peer's state", source.NextStep, options.CallTimeoutSeconds, cancel, async ct =>
        {
            if (BeforeSync is { } hook && !hook(source)) throw new RpcException(new Status(StatusCode.Aborted, $"the peer {source.Source.WorkerId} whose state it was to take went away"));
            return await runtime.SyncStateAsync(source, ct);
        });

    /// <summary>Called before the worker takes a peer's state (whether it does: false fails the call as when that peer goes away): a test's fault at a chosen moment.</summary>
    public Func<SyncSource, bool>? BeforeSync { get; set; }

    public Task ReleaseAsync(string jobId, string reason, double timeoutSeconds, CancellationToken cancel) =>
        Call("release", 0, timeoutSeconds, cancel, async _ => { await runtime.ReleaseAsync(jobId, reason); return true; });
}
