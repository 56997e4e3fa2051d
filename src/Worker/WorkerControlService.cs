using Dtrain.Cluster;
using Dtrain.Protos.Worker;
using Google.Protobuf;
using Grpc.Core;
using static Dtrain.Worker.WorkerProtocol;

namespace Dtrain.Worker;

/// <summary>
/// The coordinator's handle on this worker over gRPC: a thin adapter over <see cref="WorkerRuntime"/> — the messages
/// to and from the protocol's domain types (<see cref="WorkerProtocol"/>), streams in and out, the call's
/// cancellation; the runtime's exceptions become status codes in the server interceptor.
/// </summary>
public sealed class WorkerControlService(WorkerRuntime runtime, WorkerPrepare prepare, TimeProvider? clock = null) : WorkerControl.WorkerControlBase
{
    private readonly TimeProvider clock = clock ?? TimeProvider.System;

    public override async Task<AssignReply> Assign(AssignRequest request, ServerCallContext context) =>
        ToProto(await runtime.AssignAsync(FromProto(request), context.CancellationToken).ConfigureAwait(false));

    public override async Task<ShardReply> LoadShard(IAsyncStreamReader<ShardChunk> requestStream, ServerCallContext context)
    {
        // Every chunk names its job; the worker holds one job at a time, so a stream names one job.
        var chunks = requestStream.ReadAllAsync(context.CancellationToken).GetAsyncEnumerator(context.CancellationToken);
        await using var _ = chunks.ConfigureAwait(false);
        // The coordinator sends at least one chunk: a stream without one lost its messages on the way (an HTTP/2
        // request replayed without them, Dtrain.Rpc.ClientStreams) and is refused, not answered as an empty shard.
        if (!await chunks.MoveNextAsync().ConfigureAwait(false))
            throw Dtrain.Rpc.ClientStreams.EmptyStreamRefusal("LoadShard", "a ShardChunk naming the job");
        var jobId = chunks.Current.JobId;
        var read = new Counter();
        var steps = await runtime.LoadShardAsync(jobId, Slices(chunks, jobId, "shard", read), context.CancellationToken).ConfigureAwait(false);
        return new ShardReply { StepsReceived = steps, ChunksReceived = read.Count };
    }

    /// <summary>Messages read from a request stream (the reply says how many, checked by the sender).</summary>
    private sealed class Counter
    {
        public long Count;
    }

    private static async IAsyncEnumerable<Cluster.ShardSlice> Slices(IAsyncEnumerator<ShardChunk> chunks, string jobId, string what, Counter read)
    {
        do
        {
            var chunk = chunks.Current;
            read.Count++;
            if (chunk.JobId != jobId) throw new ArgumentException($"{what} of job {chunk.JobId} sent with job {jobId}");
            yield return FromProto(chunk);
        }
        while (await chunks.MoveNextAsync().ConfigureAwait(false));
    }

    public override async Task<RunStepReply> RunStep(RunStepRequest request, ServerCallContext context) =>
        ToProto(await runtime.RunStepAsync(FromProto(request), context.CancellationToken).ConfigureAwait(false));

    public override async Task Evaluate(EvaluateRequest request, IServerStreamWriter<EvaluateUpdate> responseStream, ServerCallContext context)
    {
        // The batches done go out while it runs — at most every interval, and only when they advanced (a stuck
        // evaluation goes silent, and the coordinator fails it) — then the metrics.
        var interval = ProgressInterval(request.ProgressIntervalSeconds);
        long done = 0;
        var evaluation = runtime.EvaluateAsync(FromProto(request), context.CancellationToken, batches => Interlocked.Exchange(ref done, batches));
        long sent = 0;
        while (!evaluation.IsCompleted)
        {
            await Task.WhenAny(evaluation, Task.Delay(interval, clock)).ConfigureAwait(false);
            var now = Interlocked.Read(ref done);
            if (evaluation.IsCompleted || now <= sent) continue;
            await responseStream.WriteAsync(new EvaluateUpdate { Progress = new EvaluateProgress { BatchesDone = now } }, context.CancellationToken).ConfigureAwait(false);
            sent = now;
        }
        await responseStream.WriteAsync(new EvaluateUpdate { Metrics = ToProto(await evaluation.ConfigureAwait(false)) }, context.CancellationToken).ConfigureAwait(false);
    }

    /// <summary>The coordinator's progress interval for an evaluation, within [0.05 s, 2 s]; 1 s when it gives none.</summary>
    public static TimeSpan ProgressInterval(double seconds) =>
        TimeSpan.FromSeconds(seconds > 0 && double.IsFinite(seconds) ? Math.Clamp(seconds, 0.05, 2) : 1);

    public override async Task GetState(GetStateRequest request, IServerStreamWriter<StateChunk> responseStream, ServerCallContext context)
    {
        // The coordinator (checkpoints), or — worker to worker — a peer of an elastic job taking this replica's state.
        var caller = Dtrain.Rpc.PeerIdentity.Of(context);
        var peer = caller is { Role: Dtrain.Rpc.ClusterRoles.Worker } ? caller.Name : null;
        var bytes = await runtime.GetStateAsync(FromProto(request), context.CancellationToken, peer).ConfigureAwait(false);
        const int chunk = 1024 * 1024;
        for (var offset = 0; offset < bytes.Length || offset == 0; offset += chunk)
        {
            var n = Math.Min(chunk, bytes.Length - offset);
            await responseStream.WriteAsync(new StateChunk { TotalBytes = bytes.Length, Data = ByteString.CopyFrom(bytes, offset, n) }, context.CancellationToken).ConfigureAwait(false);
            if (n == 0) break;
        }
    }

    public override async Task<ApplyStepReply> ApplyStep(ApplyStepRequest request, ServerCallContext context) =>
        ToProto(await runtime.ApplyStepAsync(FromProto(request), context.CancellationToken).ConfigureAwait(false));

    public override async Task GetStageParameters(GetStateRequest request, IServerStreamWriter<NamedTensor> responseStream, ServerCallContext context)
    {
        foreach (var t in await runtime.GetStageParametersAsync(FromProto(request), context.CancellationToken).ConfigureAwait(false))
            await responseStream.WriteAsync(ToProto(t), context.CancellationToken).ConfigureAwait(false);
    }

    public override async Task<LoadStateReply> LoadState(IAsyncStreamReader<LoadStateChunk> requestStream, ServerCallContext context)
    {
        var chunks = requestStream.ReadAllAsync(context.CancellationToken).GetAsyncEnumerator(context.CancellationToken);
        await using var _ = chunks.ConfigureAwait(false);
        // The coordinator sends one message a tensor, at least one: a stream without one lost them on the way.
        if (!await chunks.MoveNextAsync().ConfigureAwait(false))
            throw Dtrain.Rpc.ClientStreams.EmptyStreamRefusal("LoadState", "a LoadStateChunk naming the job and its first tensor");
        var jobId = chunks.Current.JobId;
        return ToProto(await runtime.LoadStateAsync(jobId, Tensors(chunks, jobId), context.CancellationToken).ConfigureAwait(false));
    }

    private static async IAsyncEnumerable<ParameterTensor?> Tensors(IAsyncEnumerator<LoadStateChunk> chunks, string jobId)
    {
        do
        {
            var chunk = chunks.Current;
            if (chunk.JobId != jobId) throw new ArgumentException($"state of job {chunk.JobId} sent with job {jobId}");
            yield return chunk.Tensor is null ? null : FromProto(chunk.Tensor);
        }
        while (await chunks.MoveNextAsync().ConfigureAwait(false));
    }

    public override async Task<AbortReply> Abort(AbortRequest request, ServerCallContext context) =>
        ToProto(await runtime.AbortAsync(request.JobId, request.Generation, request.Reason).ConfigureAwait(false));

    public override async Task<ReconfigureReply> Reconfigure(ReconfigureRequest request, ServerCallContext context)
    {
        await runtime.ReconfigureAsync(FromProto(request), context.CancellationToken).ConfigureAwait(false);
        return new ReconfigureReply();
    }

    public override async Task<SyncStateReply> SyncState(SyncStateRequest request, ServerCallContext context) =>
        ToProto(await runtime.SyncStateAsync(FromProto(request), context.CancellationToken).ConfigureAwait(false));

    public override Task<PrepareCountReply> PrepareCount(PrepareCountRequest request, ServerCallContext context) =>
        prepare.CountAsync(request, context.CancellationToken);

    public override Task<PrepareEncodeReply> PrepareEncode(PrepareEncodeRequest request, ServerCallContext context) =>
        prepare.EncodeAsync(request, context.CancellationToken);

    public override async Task<ReleaseReply> Release(ReleaseRequest request, ServerCallContext context)
    {
        // A job's id, or a prepare's (`dtrain prepare --on-cluster`): answered once its calls here have ended.
        await prepare.ReleaseAsync(request.JobId).ConfigureAwait(false);
        await runtime.ReleaseAsync(request.JobId, request.Reason).ConfigureAwait(false);
        return new ReleaseReply();
    }
}
