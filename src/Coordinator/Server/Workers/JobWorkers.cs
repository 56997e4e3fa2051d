using Dtrain.Cluster;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// The workers of one job, by rank — the only way a step driver reaches them, each through its
/// <see cref="IWorkerHandle"/> (over gRPC in a cluster, in process in tests). A call on all ranks fails with the first
/// real cause (not a peer that only saw the failure) and cancels the others.
/// </summary>
public class JobWorkers(IReadOnlyList<IWorkerHandle> handles, CoordinatorOptions options)
{
    public IReadOnlyList<IWorkerHandle> Handles { get; } = handles;

    /// <summary>Worker id and address of each rank.</summary>
    public IReadOnlyList<(string Id, string Address)> Members { get; } = [.. handles.Select(h => (h.Worker.Id, h.Worker.Address))];

    public int Count => Handles.Count;

    /// <summary>Rank <paramref name="rank"/> as its peers reach it (with TLS, the certificate it must present).</summary>
    public ClusterPeer Peer(int rank, int asRank) => new(asRank, Handles[rank].Worker.Id, Handles[rank].Worker.Address, Handles[rank].Worker.Certificate);

    /// <summary>Every rank, in rank order, as a ring's peers.</summary>
    public IReadOnlyList<ClusterPeer> Peers => [.. Enumerable.Range(0, Count).Select(r => Peer(r, r))];

    public Task<AssignResult[]> AssignAsync(Func<int, Assignment> assignment, CancellationToken cancel) =>
        OnAllAsync(cancel, (h, rank, ct) => h.AssignAsync(assignment(rank), ct));

    public Task LoadShardsAsync(string jobId, IReadOnlyList<ShardSlice> perRank, long step, CancellationToken cancel) =>
        OnAllAsync(cancel, async (h, rank, ct) =>
        {
            await h.LoadShardsAsync(jobId, perRank[rank], step, ct).ConfigureAwait(false);
            return true;
        });

    public Task<StepResult[]> RunStepAsync(StepCommand command, double timeoutSeconds, CancellationToken cancel) =>
        OnAllAsync(cancel, (h, _, ct) => h.RunStepAsync(command, timeoutSeconds, ct));

    /// <summary>Pipeline jobs: the second half of a step on every worker.</summary>
    public Task<ApplyResult[]> ApplyStepAsync(ApplyCommand command, CancellationToken cancel) =>
        OnAllAsync(cancel, (h, _, ct) => h.ApplyStepAsync(command, options.StepTimeoutSeconds, ct));

    /// <summary>Every rank evaluates its part of the validation split (rank r of the world: <see cref="Training.EvalPart"/>); the parts' sums combined.</summary>
    public async Task<Training.EvalSums> EvaluateAsync(EvalCommand command, long step, CancellationToken cancel) =>
        Training.EvalSums.Combine(await OnAllAsync(cancel, (h, rank, ct) => h.EvaluateAsync(command with { Part = rank, Parts = Count }, step, ct)).ConfigureAwait(false));

    public Task<byte[]> GetStateAsync(int rank, StateSnapshot snapshot, CancellationToken cancel) => Handles[rank].GetStateAsync(snapshot, cancel);

    /// <summary>Pipeline jobs: a stage's parameters under their whole-model names.</summary>
    public Task<IReadOnlyList<ParameterTensor>> GetStageParametersAsync(int rank, StateSnapshot snapshot, CancellationToken cancel) => Handles[rank].GetStageParametersAsync(snapshot, cancel);

    /// <summary>Resumed jobs: every rank's parameters and optimizer state (the tensors it holds), after Assign.</summary>
    public Task<LoadStateResult[]> LoadStateAsync(string jobId, Func<int, IEnumerable<ParameterTensor>> perRank, long step, CancellationToken cancel) =>
        OnAllAsync(cancel, (h, rank, ct) => h.LoadStateAsync(jobId, perRank(rank), step, ct));

    /// <summary>Elastic jobs: every member joins the ring of a new generation.</summary>
    public Task ReconfigureAsync(Func<int, RingMembership> membership, CancellationToken cancel) =>
        OnAllAsync(cancel, async (h, rank, ct) =>
        {
            await h.ReconfigureAsync(membership(rank), ct).ConfigureAwait(false);
            return true;
        });

    /// <summary>Elastic jobs: every one of these workers takes the state of a peer.</summary>
    public Task<SyncResult[]> SyncStateAsync(SyncSource source, CancellationToken cancel) =>
        OnAllAsync(cancel, (h, _, ct) => h.SyncStateAsync(source, ct));

    /// <summary>Releases every worker that is not lost from the job (best effort, within <paramref name="timeoutSeconds"/>: a worker that cannot be told is logged).</summary>
    public static Task ReleaseAsync(IEnumerable<IWorkerHandle> workers, WorkerRegistry registry, string jobId, string reason, double timeoutSeconds, ILogger log) =>
        Task.WhenAll(workers.Select(async h =>
        {
            if (registry.StateOf(h.Worker.Id) == MembershipState.Lost) return;
            try
            {
                await h.ReleaseAsync(jobId, reason, timeoutSeconds, CancellationToken.None).ConfigureAwait(false);
            }
            catch (JobFailure e)
            {
                log.LogWarning("could not release worker {Id} from job {Job}: {Status}", h.Worker.Id, jobId, e.Detail ?? e.Message);
            }
        }));

    /// <summary>Runs a call on every worker at once; the first failure fails the job naming that worker and step, and cancels the other calls.</summary>
    private async Task<T[]> OnAllAsync<T>(CancellationToken cancel, Func<IWorkerHandle, int, CancellationToken, Task<T>> call)
    {
        using var group = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var tasks = Handles.Select((h, rank) => call(h, rank, group.Token)).ToList();
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
}
