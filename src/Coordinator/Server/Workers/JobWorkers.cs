using Dtrain.Protos.Worker;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// The workers of one job, by rank — the only way a step driver reaches them. Every call that fails throws a
/// <see cref="JobFailure"/> naming the worker and the step; a call on all ranks fails with the first real cause
/// (not a peer that only saw the failure) and cancels the others. Over gRPC in a cluster (<see cref="GrpcJobWorkers"/>),
/// or in memory in tests.
/// </summary>
public interface IJobWorkers
{
    /// <summary>Worker id and address of each rank.</summary>
    IReadOnlyList<(string Id, string Address)> Members { get; }

    Task<AssignReply[]> AssignAsync(Func<int, AssignRequest> request, CancellationToken cancel);
    Task LoadShardsAsync(IReadOnlyList<IReadOnlyList<ShardChunk>> perRank, long step, CancellationToken cancel);
    Task<RunStepReply[]> RunStepAsync(RunStepRequest request, double timeoutSeconds, CancellationToken cancel);
    Task<EvaluateReply> EvaluateAsync(int rank, EvaluateRequest request, long step, CancellationToken cancel);
    Task<byte[]> GetStateAsync(int rank, GetStateRequest request, long step, CancellationToken cancel);
    /// <summary>Pipeline jobs: the second half of a step on every worker.</summary>
    Task<ApplyStepReply[]> ApplyStepAsync(ApplyStepRequest request, CancellationToken cancel);
    /// <summary>Pipeline jobs: a stage's parameters under their whole-model names.</summary>
    Task<IReadOnlyList<NamedTensor>> GetStageParametersAsync(int rank, GetStateRequest request, long step, CancellationToken cancel);
    /// <summary>Resumed jobs: every rank's parameters and optimizer state (the tensors it holds), after Assign.</summary>
    Task<LoadStateReply[]> LoadStateAsync(string jobId, Func<int, IEnumerable<NamedTensor>> perRank, long step, CancellationToken cancel);
}

/// <summary>A job's workers over gRPC, with the failure attribution the user sees.</summary>
public sealed class GrpcJobWorkers(IReadOnlyList<WorkerRecord> workers, WorkerClients clients, CoordinatorOptions options) : IJobWorkers
{
    public IReadOnlyList<(string Id, string Address)> Members { get; } = [.. workers.Select(w => (w.Id, w.Address))];

    public Task<AssignReply[]> AssignAsync(Func<int, AssignRequest> request, CancellationToken cancel) =>
        OnAllAsync("assign", 0, options.CallTimeoutSeconds, cancel, (w, rank, deadline, ct) =>
            clients.For(w).AssignAsync(WorkerClients.Pin(request(rank), workers), deadline: deadline, cancellationToken: ct).ResponseAsync);

    public Task LoadShardsAsync(IReadOnlyList<IReadOnlyList<ShardChunk>> perRank, long step, CancellationToken cancel) =>
        OnAllAsync("load shard", step, options.CallTimeoutSeconds, cancel, async (w, rank, deadline, ct) =>
        {
            using var call = clients.For(w).LoadShard(deadline: deadline, cancellationToken: ct);
            foreach (var chunk in perRank[rank]) await call.RequestStream.WriteAsync(chunk, ct).ConfigureAwait(false);
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
            return await call.ResponseAsync.ConfigureAwait(false);
        });

    public Task<RunStepReply[]> RunStepAsync(RunStepRequest request, double timeoutSeconds, CancellationToken cancel) =>
        OnAllAsync("step", request.Step, timeoutSeconds, cancel, (w, rank, deadline, ct) =>
            clients.For(w).RunStepAsync(request, deadline: deadline, cancellationToken: ct).ResponseAsync);

    public Task<EvaluateReply> EvaluateAsync(int rank, EvaluateRequest request, long step, CancellationToken cancel) =>
        Call(workers[rank], "evaluate", step, options.CallTimeoutSeconds, cancel, (deadline, ct) =>
            clients.For(workers[rank]).EvaluateAsync(request, deadline: deadline, cancellationToken: ct).ResponseAsync);

    public Task<byte[]> GetStateAsync(int rank, GetStateRequest request, long step, CancellationToken cancel) =>
        Call(workers[rank], "checkpoint", step, options.CallTimeoutSeconds, cancel, async (deadline, ct) =>
        {
            using var call = clients.For(workers[rank]).GetState(request, deadline: deadline, cancellationToken: ct);
            using var ms = new MemoryStream();
            await foreach (var chunk in call.ResponseStream.ReadAllAsync(ct).ConfigureAwait(false)) chunk.Data.WriteTo(ms);
            return ms.ToArray();
        });

    public Task<ApplyStepReply[]> ApplyStepAsync(ApplyStepRequest request, CancellationToken cancel) =>
        OnAllAsync("apply step", request.Step, options.StepTimeoutSeconds, cancel, (w, rank, deadline, ct) =>
            clients.For(w).ApplyStepAsync(request, deadline: deadline, cancellationToken: ct).ResponseAsync);

    public Task<IReadOnlyList<NamedTensor>> GetStageParametersAsync(int rank, GetStateRequest request, long step, CancellationToken cancel) =>
        Call(workers[rank], "checkpoint", step, options.CallTimeoutSeconds, cancel, async (deadline, ct) =>
        {
            using var call = clients.For(workers[rank]).GetStageParameters(request, deadline: deadline, cancellationToken: ct);
            var list = new List<NamedTensor>();
            await foreach (var t in call.ResponseStream.ReadAllAsync(ct).ConfigureAwait(false)) list.Add(t);
            return (IReadOnlyList<NamedTensor>)list;
        });

    public Task<LoadStateReply[]> LoadStateAsync(string jobId, Func<int, IEnumerable<NamedTensor>> perRank, long step, CancellationToken cancel) =>
        OnAllAsync("load the checkpoint's state", step, options.CallTimeoutSeconds, cancel, async (w, rank, deadline, ct) =>
        {
            using var call = clients.For(w).LoadState(deadline: deadline, cancellationToken: ct);
            foreach (var t in perRank(rank)) await call.RequestStream.WriteAsync(new LoadStateChunk { JobId = jobId, Tensor = t }, ct).ConfigureAwait(false);
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
            return await call.ResponseAsync.ConfigureAwait(false);
        });

    /// <summary>Elastic jobs: every member joins the ring of a new generation.</summary>
    public Task<ReconfigureReply[]> ReconfigureAsync(Func<int, ReconfigureRequest> request, CancellationToken cancel) =>
        OnAllAsync("re-form the ring", 0, options.CallTimeoutSeconds, cancel, (w, rank, deadline, ct) =>
            clients.For(w).ReconfigureAsync(request(rank), deadline: deadline, cancellationToken: ct).ResponseAsync);

    /// <summary>Elastic jobs: every one of these workers takes the state of a peer.</summary>
    public Task<SyncStateReply[]> SyncStateAsync(SyncStateRequest request, long step, CancellationToken cancel) =>
        OnAllAsync("take a peer's state", step, options.CallTimeoutSeconds, cancel, (w, rank, deadline, ct) =>
            clients.For(w).SyncStateAsync(request, deadline: deadline, cancellationToken: ct).ResponseAsync);

    /// <summary>Releases every worker that is not lost from the job (best effort, within <paramref name="timeoutSeconds"/>: a worker that cannot be told is logged).</summary>
    public static Task ReleaseAsync(IReadOnlyList<WorkerRecord> workers, WorkerClients clients, WorkerRegistry registry, string jobId, string reason, double timeoutSeconds, ILogger log) =>
        Task.WhenAll(workers.Select(async w =>
        {
            if (registry.StateOf(w.Id) == MembershipState.Lost) return;
            try
            {
                await clients.For(w).ReleaseAsync(new ReleaseRequest { JobId = jobId, Reason = reason }, deadline: DateTime.UtcNow.AddSeconds(timeoutSeconds)).ConfigureAwait(false);
            }
            catch (RpcException e)
            {
                log.LogWarning("could not release worker {Id} from job {Job}: {Status}", w.Id, jobId, e.Status.Detail);
            }
        }));

    /// <summary>Runs a call on every worker at once; the first failure fails the job naming that worker and step, and cancels the other calls.</summary>
    private async Task<T[]> OnAllAsync<T>(string what, long step, double timeoutSeconds, CancellationToken cancel,
        Func<WorkerRecord, int, DateTime, CancellationToken, Task<T>> call)
    {
        using var group = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var tasks = workers.Select((w, rank) => Call(w, what, step, timeoutSeconds, group.Token, (deadline, ct) => call(w, rank, deadline, ct))).ToList();
        var pending = new List<Task<T>>(tasks);
        while (pending.Count > 0)
        {
            var finished = await Task.WhenAny(pending).ConfigureAwait(false);
            pending.Remove(finished);
            if (finished.IsFaulted || finished.IsCanceled)
            {
                // A worker that reports a failed peer usually hears of it before the coordinator's own call to the
                // dead peer fails: give that call a moment to fail on its own, so the dead worker is the one named.
                if (finished.Exception?.InnerException is JobFailure { PeerFailure: true })
                    await Task.WhenAny(Task.WhenAll(pending), Task.Delay(TimeSpan.FromSeconds(options.FailureBlameGraceSeconds), CancellationToken.None)).ConfigureAwait(false);
                await group.CancelAsync().ConfigureAwait(false);
                await Task.WhenAll(pending.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).ConfigureAwait(false);
                // When a worker dies its ring neighbours fail too, often first: blame the one that could not be reached.
                var failures = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
                var culprit = failures.OfType<JobFailure>().FirstOrDefault(f => f.Unreachable is not null)
                    ?? failures.OfType<JobFailure>().FirstOrDefault(f => !f.PeerFailure)
                    ?? failures.FirstOrDefault();
                if (culprit is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(culprit);
                await finished.ConfigureAwait(false);
            }
        }
        return [.. tasks.Select(t => t.Result)];
    }

    private static async Task<T> Call<T>(WorkerRecord w, string what, long step, double timeoutSeconds, CancellationToken cancel, Func<DateTime, CancellationToken, Task<T>> call)
    {
        try
        {
            return await call(DateTime.UtcNow.AddSeconds(timeoutSeconds), cancel).ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded)
        {
            throw new JobFailure($"worker {w.Id} ({w.Address}) did not finish {what} at step {step} within {timeoutSeconds:F0}s (hung or overloaded)", w);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !cancel.IsCancellationRequested)
        {
            throw new JobFailure($"worker {w.Id} ({w.Address}) unreachable during {what} at step {step}: {e.Status.Detail}", w);
        }
        catch (RpcException e) when (!cancel.IsCancellationRequested || e.StatusCode == StatusCode.Aborted)
        {
            // An unexpected error's text past its first line (a native stack trace, from a worker of an older version)
            // goes to the coordinator's log only (JobRunner), not into the job's state.
            var unexpected = e.StatusCode is StatusCode.Internal or StatusCode.Unknown;
            var detail = unexpected ? Rpc.ErrorText.FirstLine(e.Status.Detail) : e.Status.Detail;
            throw new JobFailure($"worker {w.Id} ({w.Address}) failed {what} at step {step}: {e.StatusCode}: {detail}", peerFailure: e.StatusCode == StatusCode.Aborted)
            {
                FullText = unexpected && detail != e.Status.Detail ? e.Status.Detail : null,
            };
        }
    }
}
