using Dtrain.Protos.Worker;
using Google.Protobuf;
using Grpc.Core;

namespace Dtrain.Worker;

/// <summary>
/// The coordinator's handle on this worker over gRPC: a thin adapter over <see cref="WorkerRuntime"/> (streams in and
/// out, the call's cancellation); the runtime's exceptions become status codes in the server interceptor.
/// </summary>
public sealed class WorkerControlService(WorkerRuntime runtime) : WorkerControl.WorkerControlBase
{
    public override Task<AssignReply> Assign(AssignRequest request, ServerCallContext context) => runtime.AssignAsync(request, context.CancellationToken);

    public override Task<ShardReply> LoadShard(IAsyncStreamReader<ShardChunk> requestStream, ServerCallContext context) =>
        runtime.LoadShardAsync(requestStream.ReadAllAsync(context.CancellationToken), context.CancellationToken);

    public override Task<RunStepReply> RunStep(RunStepRequest request, ServerCallContext context) => runtime.RunStepAsync(request, context.CancellationToken);

    public override Task<EvaluateReply> Evaluate(EvaluateRequest request, ServerCallContext context) => runtime.EvaluateAsync(request, context.CancellationToken);

    public override async Task GetState(GetStateRequest request, IServerStreamWriter<StateChunk> responseStream, ServerCallContext context)
    {
        // The coordinator (checkpoints), or — worker to worker — a peer of an elastic job taking this replica's state.
        var caller = Dtrain.Rpc.PeerIdentity.Of(context);
        var peer = caller is { Role: Dtrain.Rpc.ClusterRoles.Worker } ? caller.Name : null;
        var bytes = await runtime.GetStateAsync(request, context.CancellationToken, peer).ConfigureAwait(false);
        const int chunk = 1024 * 1024;
        for (var offset = 0; offset < bytes.Length || offset == 0; offset += chunk)
        {
            var n = Math.Min(chunk, bytes.Length - offset);
            await responseStream.WriteAsync(new StateChunk { TotalBytes = bytes.Length, Data = ByteString.CopyFrom(bytes, offset, n) }, context.CancellationToken).ConfigureAwait(false);
            if (n == 0) break;
        }
    }

    public override Task<ApplyStepReply> ApplyStep(ApplyStepRequest request, ServerCallContext context) => runtime.ApplyStepAsync(request, context.CancellationToken);

    public override async Task GetStageParameters(GetStateRequest request, IServerStreamWriter<NamedTensor> responseStream, ServerCallContext context)
    {
        foreach (var t in await runtime.GetStageParametersAsync(request, context.CancellationToken).ConfigureAwait(false))
            await responseStream.WriteAsync(t, context.CancellationToken).ConfigureAwait(false);
    }

    public override Task<LoadStateReply> LoadState(IAsyncStreamReader<LoadStateChunk> requestStream, ServerCallContext context) =>
        runtime.LoadStateAsync(requestStream.ReadAllAsync(context.CancellationToken), context.CancellationToken);

    public override Task<AbortReply> Abort(AbortRequest request, ServerCallContext context) => runtime.AbortAsync(request);

    public override Task<ReconfigureReply> Reconfigure(ReconfigureRequest request, ServerCallContext context) => runtime.ReconfigureAsync(request, context.CancellationToken);

    public override Task<SyncStateReply> SyncState(SyncStateRequest request, ServerCallContext context) => runtime.SyncStateAsync(request, context.CancellationToken);

    public override Task<ReleaseReply> Release(ReleaseRequest request, ServerCallContext context) => runtime.ReleaseAsync(request);
}
