using Dtrain.Cluster;
using Dtrain.Protos.Worker;
using Dtrain.Rpc;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>
/// A worker over gRPC (WorkerControl): the deadlines of its calls (<see cref="CoordinatorOptions"/>), the wire form of
/// the protocol (<see cref="WorkerProtoMapping"/>), and the translation of its failures (<see cref="WorkerCallFailure"/>).
/// </summary>
public sealed class GrpcWorkerHandle(WorkerRecord worker, WorkerClients clients, CoordinatorOptions options, TimeProvider? clock = null) : IWorkerHandle
{
    private readonly TimeProvider clock = clock ?? TimeProvider.System;

    public WorkerRecord Worker { get; } = worker;

    private WorkerControl.WorkerControlClient Client => clients.For(Worker);

    private DateTime Deadline(double seconds) => clock.GetUtcNow().UtcDateTime.AddSeconds(seconds);

    private Task<T> Call<T>(string what, long step, double timeoutSeconds, CancellationToken cancel, Func<DateTime, Task<T>> call) =>
        WorkerCallFailure.GuardAsync(Worker, what, step, timeoutSeconds, cancel, () => call(Deadline(timeoutSeconds)));

    public Task<AssignResult> AssignAsync(Assignment assignment, CancellationToken cancel) =>
        Call("assign", 0, options.CallTimeoutSeconds, cancel, async deadline =>
            WorkerProtoMapping.FromProto(await Client.AssignAsync(assignment.ToProto(), deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false)));

    public Task LoadShardsAsync(string jobId, ShardSlice slice, long step, CancellationToken cancel) =>
        Call("load shard", step, options.CallTimeoutSeconds, cancel, async deadline =>
        {
            var chunks = slice.ToChunks(jobId, options.ShardChunkValues);
            // chunks_received 0 in a reply: a worker of an earlier version, which does not report it (one of this version
            // refuses a stream without a chunk, so it never answers 0): taken as it was before, unchecked.
            return await Streamed("load shard", step, () => Client.LoadShard(deadline: deadline, cancellationToken: cancel), chunks,
                r => r.ChunksReceived == 0 ? chunks.Count : r.ChunksReceived, cancel).ConfigureAwait(false);
        });

    /// <summary>
    /// A client-streaming call to the worker (<see cref="ClientStreams"/>): sent again while its stream arrives empty,
    /// and failed — naming the worker, the call and what was lost — when the worker read fewer messages than were sent.
    /// </summary>
    private async Task<TResponse> Streamed<TRequest, TResponse>(string what, long step, Func<AsyncClientStreamingCall<TRequest, TResponse>> open,
        IReadOnlyList<TRequest> messages, Func<TResponse, long> received, CancellationToken cancel)
    {
        try
        {
            return await ClientStreams.SendAsync($"worker {Worker.Id} ({Worker.Address}) {what} at step {step}", open, messages, received, cancel).ConfigureAwait(false);
        }
        catch (StreamLossException e)
        {
            throw new JobFailure(e.Message, Worker);
        }
    }

    public Task<StepResult> RunStepAsync(StepCommand command, double timeoutSeconds, CancellationToken cancel) =>
        Call("step", command.Step, timeoutSeconds, cancel, async deadline =>
            WorkerProtoMapping.FromProto(await Client.RunStepAsync(command.ToProto(), deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false)));

    public Task<ApplyResult> ApplyStepAsync(ApplyCommand command, double timeoutSeconds, CancellationToken cancel) =>
        Call("apply step", command.Step, timeoutSeconds, cancel, async deadline =>
            WorkerProtoMapping.FromProto(await Client.ApplyStepAsync(command.ToProto(), deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false)));

    /// <summary>
    /// An evaluation is bounded by its progress, not by the clock: the worker reports the batches done while it runs (at
    /// most every quarter of the call timeout, 1 s at most), and the call fails only when none arrived for
    /// <see cref="CoordinatorOptions.CallTimeoutSeconds"/> — a hung evaluation is caught, a long one that advances is not.
    /// </summary>
    public Task<Training.EvalSums> EvaluateAsync(EvalCommand command, long step, CancellationToken cancel) =>
        WorkerCallFailure.GuardAsync(Worker, "evaluate", step, options.CallTimeoutSeconds, cancel, async () =>
        {
            var silence = TimeSpan.FromSeconds(options.CallTimeoutSeconds);
            using var quiet = new CancellationTokenSource(silence, clock);
            using var either = CancellationTokenSource.CreateLinkedTokenSource(cancel, quiet.Token);
            var request = command.ToProto();
            request.ProgressIntervalSeconds = Math.Min(1, options.CallTimeoutSeconds / 4);
            long done = 0;
            try
            {
                using var call = Client.Evaluate(request, cancellationToken: either.Token);
                await foreach (var update in call.ResponseStream.ReadAllAsync(either.Token).ConfigureAwait(false))
                {
                    if (update.Metrics is { } metrics) return WorkerProtoMapping.FromProto(metrics);
                    if (update.Progress is { } progress && progress.BatchesDone > done)
                    {
                        done = progress.BatchesDone;
                        quiet.CancelAfter(silence);
                    }
                }
                throw new JobFailure($"worker {Worker.Id} ({Worker.Address}) ended evaluate at step {step} without its metrics", Worker);
            }
            catch (Exception e) when ((e is OperationCanceledException or RpcException) && quiet.IsCancellationRequested && !cancel.IsCancellationRequested)
            {
                throw new JobFailure($"worker {Worker.Id} ({Worker.Address}) made no progress in evaluate at step {step} for {options.CallTimeoutSeconds:F0}s " +
                    $"after {done} batches (hung or overloaded)", Worker);
            }
        });

    public Task<byte[]> GetStateAsync(StateSnapshot snapshot, CancellationToken cancel) =>
        Call("checkpoint", snapshot.Step, options.CallTimeoutSeconds, cancel, async deadline =>
        {
            using var call = Client.GetState(snapshot.ToProto(), deadline: deadline, cancellationToken: cancel);
            using var ms = new MemoryStream();
            await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancel).ConfigureAwait(false)) chunk.Data.WriteTo(ms);
            return ms.ToArray();
        });

    public Task<IReadOnlyList<ParameterTensor>> GetStageParametersAsync(StateSnapshot snapshot, CancellationToken cancel) =>
        Call("checkpoint", snapshot.Step, options.CallTimeoutSeconds, cancel, async deadline =>
        {
            using var call = Client.GetStageParameters(snapshot.ToProto(), deadline: deadline, cancellationToken: cancel);
            var list = new List<ParameterTensor>();
            await foreach (var t in call.ResponseStream.ReadAllAsync(cancel).ConfigureAwait(false)) list.Add(WorkerProtoMapping.FromProto(t));
            return (IReadOnlyList<ParameterTensor>)list;
        });

    public Task<LoadStateResult> LoadStateAsync(string jobId, IEnumerable<ParameterTensor> tensors, long step, CancellationToken cancel) =>
        Call("load the checkpoint's state", step, options.CallTimeoutSeconds, cancel, async deadline =>
        {
            var chunks = tensors.Select(t => new LoadStateChunk { JobId = jobId, Tensor = t.ToProto() }).ToList();
            if (chunks.Count == 0) return new LoadStateResult(0, 0);
            return WorkerProtoMapping.FromProto(await Streamed("load the checkpoint's state", step, () => Client.LoadState(deadline: deadline, cancellationToken: cancel),
                chunks, r => r.Tensors, cancel).ConfigureAwait(false));
        });

    public Task<StepStanding> AbortAsync(string jobId, long generation, string reason, CancellationToken cancel) =>
        Call("abort", 0, options.CallTimeoutSeconds, cancel, async deadline =>
            WorkerProtoMapping.FromProto(await Client.AbortAsync(new AbortRequest { JobId = jobId, Generation = generation, Reason = reason }, deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false)));

    public Task ReconfigureAsync(RingMembership membership, CancellationToken cancel) =>
        Call("re-form the ring", 0, options.CallTimeoutSeconds, cancel, async deadline =>
            await Client.ReconfigureAsync(membership.ToProto(), deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false));

    public Task<SyncResult> SyncStateAsync(SyncSource source, CancellationToken cancel) =>
        Call("take a peer's state", source.NextStep, options.CallTimeoutSeconds, cancel, async deadline =>
            WorkerProtoMapping.FromProto(await Client.SyncStateAsync(source.ToProto(), deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false)));

    public Task ReleaseAsync(string jobId, string reason, double timeoutSeconds, CancellationToken cancel) =>
        Call("release", 0, timeoutSeconds, cancel, async deadline =>
            await Client.ReleaseAsync(new ReleaseRequest { JobId = jobId, Reason = reason }, deadline: deadline, cancellationToken: cancel).ResponseAsync.ConfigureAwait(false));
}
