using System.Collections.Concurrent;
using Dtrain.Protos.Worker;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>Builds the assignment of a rank: (rank, world, generation, first step, peers in rank order).</summary>
public delegate AssignRequest AssignmentBuilder(int rank, int world, long generation, long startStep, IReadOnlyList<Peer> peers);

/// <summary>What a change of a job's workers did: where training continues, who went, who came.</summary>
public sealed record Reconfiguration(long NextStep, long Generation, IReadOnlyList<string> Gone, IReadOnlyList<string> Joined, IReadOnlyList<string> Members);

/// <summary>
/// The workers of a data-parallel job across membership generations. A fixed fleet (in-memory tests) never changes;
/// an elastic one (<see cref="JobFleet"/>) loses members that die, hang, are cut off or drain, admits idle workers
/// while below its maximum, and re-forms the job on the new membership at a step boundary.
/// </summary>
public interface IJobFleet
{
    /// <summary>The workers of the current generation, by rank.</summary>
    IJobWorkers Workers { get; }
    long Generation { get; }
    /// <summary>Cancelled when a member of the current generation is lost or leaves.</summary>
    CancellationToken Departed { get; }
    /// <summary>Why the membership should change at the next step boundary — idle workers could join, or an admin drained a member — or null (checked at step boundaries).</summary>
    string? ChangeDue { get; }
    /// <summary>Whether a failure is one a new membership recovers from (a member lost, hung, unreachable or gone); removes the culprit.</summary>
    Task<bool> AbsorbsAsync(Exception failure, CancellationToken cancel);
    /// <summary>Stops the generation, drops departed members, admits joiners (waiting while below the minimum), and starts the next generation with every member at one committed step.</summary>
    Task<Reconfiguration> ReconfigureAsync(string reason, AssignmentBuilder assign, CancellationToken cancel);
    /// <summary>
    /// The job's first assignment (Assign, and LoadState when resumed) failed before any step: drops departed members,
    /// releases what the others half built, admits idle workers (waiting while below the minimum) and starts a new
    /// generation that the caller assigns from scratch.
    /// </summary>
    Task ReassignAsync(string reason, CancellationToken cancel);
}

/// <summary>A job's workers that never change (in-memory drivers, and jobs that may not resize).</summary>
public sealed class FixedFleet(IJobWorkers workers) : IJobFleet
{
    public IJobWorkers Workers { get; } = workers;
    public long Generation => 1;
    public CancellationToken Departed => CancellationToken.None;
    public string? ChangeDue => null;
    public Task<bool> AbsorbsAsync(Exception failure, CancellationToken cancel) => Task.FromResult(false);
    public Task<Reconfiguration> ReconfigureAsync(string reason, AssignmentBuilder assign, CancellationToken cancel) => throw new InvalidOperationException("a fixed set of workers cannot change");
    public Task ReassignAsync(string reason, CancellationToken cancel) => throw new InvalidOperationException("a fixed set of workers cannot change");
}

/// <summary>An elastic data-parallel job's workers over gRPC, tracking membership through the registry's events.</summary>
public sealed class JobFleet : IJobFleet, IDisposable
{
    private readonly JobRecord job;
    private readonly WorkerRegistry registry;
    private readonly WorkerClients clients;
    private readonly CoordinatorOptions options;
    private readonly ILogger log;
    private readonly Lock gate = new();
    private List<WorkerRecord> members;
    private readonly Dictionary<string, WorkerRecord> everyone = [];
    private readonly ConcurrentQueue<(WorkerRecord Worker, string Reason)> departures = new();
    private CancellationTokenSource departed = new();
    private volatile bool idleSeen;

    public int Min { get; }
    public int Max { get; }
    public long Generation { get; private set; }
    public IJobWorkers Workers { get; private set; }
    public CancellationToken Departed => departed.Token;
    private int MemberCount { get { lock (gate) return members.Count; } }

    public string? ChangeDue
    {
        get
        {
            var drained = Drained();
            if (drained.Count > 0)
            {
                // A drain lets a member go only while at least the minimum stays (with idle workers that replace it),
                // as a PodDisruptionBudget holds up kubectl drain; meanwhile the listing says why it waits.
                var free = registry.FreeCount();
                if (MemberCount - drained.Count + free >= Min) return $"{string.Join(", ", drained)} drained";
                foreach (var id in drained)
                    registry.SetMessage(id, $"drain waits: {job.Id} needs at least {Min} worker(s) and has {MemberCount}; it leaves when an idle worker can take its place");
            }
            return idleSeen && MemberCount < Max && registry.FreeCount() > 0 ? "idle workers can join" : null;
        }
    }

    /// <summary>Members an admin drained that are still in the job.</summary>
    private List<string> Drained()
    {
        var ids = registry.DrainsOf(job.Id);
        if (ids.Count == 0) return [];
        lock (gate) return [.. ids.Where(id => members.Any(m => m.Id == id))];
    }

    /// <summary>Every worker that was ever a member (to release at the end).</summary>
    public IReadOnlyList<WorkerRecord> Everyone
    {
        get { lock (gate) return [.. everyone.Values]; }
    }

    public JobFleet(JobRecord job, IReadOnlyList<WorkerRecord> workers, int min, int max, WorkerRegistry registry, WorkerClients clients, CoordinatorOptions options, ILogger log)
    {
        this.job = job;
        this.registry = registry;
        this.clients = clients;
        this.options = options;
        this.log = log;
        members = [.. workers];
        foreach (var w in workers) everyone[w.Id] = w;
        Min = Math.Max(1, min);
        Max = Math.Max(max, workers.Count);
        Workers = new GrpcJobWorkers(members, clients, options);
        registry.WorkerLost += OnLost;
        registry.WorkerLeft += OnLeft;
        registry.Changed += OnChanged;
        Generation = job.NextGeneration();
        job.Update(p => p with { MinWorkers = Min, MaxWorkers = Max });
    }

    private bool IsMember(WorkerRecord w)
    {
        lock (gate) return w.JobId == job.Id && members.Any(m => m.Id == w.Id);
    }

    private void Depart(WorkerRecord w, string reason)
    {
        if (!IsMember(w)) return;
        departures.Enqueue((w, reason));
        lock (gate) departed.Cancel();
    }

    private void OnLost(WorkerRecord w) => Depart(w, $"worker {w.Id} ({w.Address}) lost: no heartbeat for {options.WorkerTimeoutSeconds:F0}s at step {job.Progress.Step}{w.LastSeenDoing(DateTimeOffset.UtcNow)}");
    private void OnLeft(WorkerRecord w, string reason) => Depart(w, $"worker {w.Id} ({w.Address}) left after step {job.Progress.Step}: {reason}");
    private void OnChanged() => idleSeen = true;

    public async Task<bool> AbsorbsAsync(Exception failure, CancellationToken cancel)
    {
        if (failure is JobFailure { Terminal: true }) return false;
        if (failure is JobFailure { Unreachable: { } w } f)
        {
            // Unreachable or past its step deadline: it is not given steps again; if it lives, it registers anew.
            registry.MarkLost(w.Id, f.Message);
            Depart(w, f.Message);
            return true;
        }
        if (Departed.IsCancellationRequested) return true;
        if (failure is JobFailure { PeerFailure: true } or RpcException or OperationCanceledException)
        {
            // A peer's failure without a named culprit: the culprit is usually declared lost within one heartbeat timeout.
            using var either = CancellationTokenSource.CreateLinkedTokenSource(cancel, Departed);
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(options.WorkerTimeoutSeconds + 1), either.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
            {
            }
            return Departed.IsCancellationRequested;
        }
        return false;
    }

    public async Task<Reconfiguration> ReconfigureAsync(string reason, AssignmentBuilder assign, CancellationToken cancel)
    {
        var generation = Generation + 1;
        var gone = new List<string>();
        var why = new List<string>();
        var joined = new List<string>();
        List<WorkerRecord> survivors;
        lock (gate) survivors = [.. members];

        void Drop(WorkerRecord w, string cause, bool lost)
        {
            if (survivors.RemoveAll(s => s.Id == w.Id) == 0) return;
            gone.Add(w.Id);
            why.Add(cause);
            if (lost) registry.MarkLost(w.Id, cause);
            else registry.Detach(w.Id, job.Id);
            job.Log($"generation {generation}: without {cause}");
        }
        while (departures.TryDequeue(out var d)) Drop(d.Worker, d.Reason, lost: registry.StateOf(d.Worker.Id) != MembershipState.Draining);

        // Stop every survivor's steps; where each stands decides the committed step (a step is applied whole or not at all).
        var standing = new Dictionary<string, AbortReply>();
        await Task.WhenAll(survivors.ToList().Select(async w =>
        {
            try
            {
                var reply = await clients.For(w).AbortAsync(new AbortRequest { JobId = job.Id, Generation = generation, Reason = reason },
                    deadline: DateTime.UtcNow.AddSeconds(options.CallTimeoutSeconds), cancellationToken: cancel).ConfigureAwait(false);
                lock (standing) standing[w.Id] = reply;
            }
            catch (RpcException e) when (!cancel.IsCancellationRequested)
            {
                // NotFound: a newcomer of a re-forming that failed half way never got the job; it is healthy and idle.
                lock (standing) Drop(w, $"worker {w.Id} ({w.Address}): abort failed: {e.Status.Detail}", lost: e.StatusCode != StatusCode.NotFound);
            }
        })).ConfigureAwait(false);
        while (departures.TryDequeue(out var d)) Drop(d.Worker, d.Reason, lost: registry.StateOf(d.Worker.Id) != MembershipState.Draining);
        survivors.RemoveAll(s => !standing.ContainsKey(s.Id));
        if (survivors.Count == 0) throw new JobFailure($"no worker of the job is left: {(why.Count > 0 ? string.Join("; ", why) : reason)}") { Terminal = true };
        var drained = Drained().Where(standing.ContainsKey).ToHashSet();
        var next = survivors.Max(s => standing[s.Id].NextStep);
        // A member that stays is the preferred source of the committed state; a drained one is as good (it still holds the job).
        var source = survivors.OrderBy(s => drained.Contains(s.Id)).First(s => standing[s.Id].NextStep == next);
        var expected = standing[source.Id].ParameterChecksum;

        // Members an admin drained stood still at the committed step like the others (and may hand it over), but
        // are not in the next generation — unless too few would stay: then they stay and their drain waits.
        var leaving = survivors.Where(s => drained.Contains(s.Id)).ToList();
        survivors = [.. survivors.Where(s => !drained.Contains(s.Id))];
        // Admit idle workers up to the maximum; below the minimum, wait for them (visibly) for a bounded time.
        // Below the minimum (not counting drained members: a drain yields to the queue) even workers held for the queue's head may be taken.
        var newcomers = registry.TryReserveUpTo(Max - survivors.Count, job.Id, needed: Min - survivors.Count - leaving.Count).ToList();
        if (leaving.Count > 0 && survivors.Count + newcomers.Count < Min)
        {
            survivors.AddRange(leaving);
            leaving.Clear();
            foreach (var extra in newcomers.Skip(Math.Max(0, Max - survivors.Count)).ToList())
            {
                registry.Detach(extra.Id, job.Id);
                newcomers.Remove(extra);
            }
        }
        await WaitForMinimumAsync(survivors, newcomers, why.Count > 0 ? string.Join("; ", why) : reason, cancel).ConfigureAwait(false);
        idleSeen = false;

        var all = survivors.Concat(newcomers).ToList();
        var world = all.Count;
        var peers = all.Select((w, r) => new Peer { Rank = r, WorkerId = w.Id, Address = w.Address, CertificateSha256 = w.Certificate }).ToList();
        lock (gate)
        {
            foreach (var n in newcomers) everyone[n.Id] = n;
            members = all;
        }
        try
        {
            // Survivors re-form the ring while newcomers are assigned into it: both sides connect at once.
            var reconfigured = new GrpcJobWorkers(survivors, clients, options).ReconfigureAsync(r =>
            {
                var request = new ReconfigureRequest { JobId = job.Id, Generation = generation, Rank = r, WorldSize = world, NextStep = next };
                request.Peers.AddRange(peers);
                return request;
            }, cancel);
            var assigned = newcomers.Count == 0 ? Task.FromResult(Array.Empty<AssignReply>())
                : new GrpcJobWorkers(newcomers, clients, options).AssignAsync(r => assign(survivors.Count + r, world, generation, next, peers), cancel);
            await Task.WhenAll(reconfigured, assigned).ConfigureAwait(false);
            // Newcomers and replicas behind the committed step take the state from one that stands at it, worker to worker.
            var pullers = all.Where(w => !standing.TryGetValue(w.Id, out var s) || s.NextStep != next).ToList();
            if (pullers.Count > 0)
            {
                var synced = await new GrpcJobWorkers(pullers, clients, options).SyncStateAsync(new SyncStateRequest { JobId = job.Id, Generation = generation, SourceAddress = source.Address, SourceWorkerId = source.Id, SourceCertificateSha256 = source.Certificate, NextStep = next }, next, cancel).ConfigureAwait(false);
                for (var i = 0; i < pullers.Count; i++)
                    if (synced[i].ParameterChecksum != expected)
                        throw new JobFailure($"worker {pullers[i].Id} took the state of step {next} from {source.Id} but its checksum {synced[i].ParameterChecksum:R} != {expected:R}");
            }
        }
        catch (Exception)
        {
            // Failed half way: the caller may try again with who is left; newcomers that did not make it go back.
            Generation = generation;
            throw;
        }
        finally
        {
            // Drained members are let go whether or not the re-forming succeeded: they are no longer members.
            foreach (var w in leaving)
            {
                gone.Add(w.Id);
                job.Log($"generation {generation}: without worker {w.Id} ({w.Address}): drained; it stays up, cordoned");
            }
            await GrpcJobWorkers.ReleaseAsync(leaving, clients, registry, job.Id, "drained", options.ReleaseTimeoutSeconds, log).ConfigureAwait(false);
            foreach (var w in leaving) registry.Detach(w.Id, job.Id);
        }
        joined.AddRange(newcomers.Select(n => n.Id));
        Generation = generation;
        Workers = new GrpcJobWorkers(all, clients, options);
        lock (gate)
        {
            departed.Dispose();
            departed = new CancellationTokenSource();
            // A departure raised while re-forming (after the drain above) belongs to the new generation.
            if (!departures.IsEmpty) departed.Cancel();
        }
        job.Update(p => p with { Generation = generation, WorkerIds = [.. all.Select(w => w.Id)] });
        log.LogInformation("job {Job} generation {Generation}: {World} worker(s) from step {Step}{Gone}{Joined}", job.Id, generation, world, next,
            gone.Count > 0 ? $"; without {string.Join(", ", gone)}" : "", joined.Count > 0 ? $"; admitted {string.Join(", ", joined)}" : "");
        return new Reconfiguration(next, generation, gone, joined, [.. all.Select(w => w.Id)]);
    }

    /// <summary>Below the minimum, waits (visibly, state waiting) for idle workers to reserve, at most Coordinator:WaitForWorkersSeconds; then the job fails.</summary>
    private async Task WaitForMinimumAsync(List<WorkerRecord> survivors, List<WorkerRecord> newcomers, string after, CancellationToken cancel)
    {
        if (survivors.Count + newcomers.Count >= Min) return;
        var waitUntil = DateTime.UtcNow.AddSeconds(options.WaitForWorkersSeconds);
        while (survivors.Count + newcomers.Count < Min)
        {
            var left = (waitUntil - DateTime.UtcNow).TotalSeconds;
            if (left <= 0)
            {
                foreach (var n in newcomers) registry.Detach(n.Id, job.Id);
                throw new JobFailure($"fewer than the minimum of {Min} worker(s) for {options.WaitForWorkersSeconds:F0}s after {after}") { Terminal = true };
            }
            var missing = Min - survivors.Count - newcomers.Count;
            job.Transition(JobTrigger.Wait, $"waiting for {missing} more worker(s), {left:F0} s left");
            await Task.Delay(TimeSpan.FromMilliseconds(500), cancel).ConfigureAwait(false);
            newcomers.AddRange(registry.TryReserveUpTo(Max - survivors.Count - newcomers.Count, job.Id, needed: Min - survivors.Count - newcomers.Count));
        }
        job.Transition(JobTrigger.Run, "");
    }

    public async Task ReassignAsync(string reason, CancellationToken cancel)
    {
        var generation = Generation + 1;
        var why = new List<string>();
        List<WorkerRecord> survivors;
        lock (gate) survivors = [.. members];

        void Drop(WorkerRecord w, string cause, bool lost)
        {
            if (survivors.RemoveAll(s => s.Id == w.Id) == 0) return;
            why.Add(cause);
            if (lost) registry.MarkLost(w.Id, cause);
            else registry.Detach(w.Id, job.Id);
            job.Log($"generation {generation}: assigning again without {cause}");
        }
        while (departures.TryDequeue(out var d)) Drop(d.Worker, d.Reason, lost: registry.StateOf(d.Worker.Id) != MembershipState.Draining);

        // No step ran: what the others built of the failed assignment is released (a worker that never got it answers all the
        // same, and Assign would replace it anyway). Only one that cannot be reached is dropped.
        await Task.WhenAll(survivors.ToList().Select(async w =>
        {
            try
            {
                await clients.For(w).ReleaseAsync(new ReleaseRequest { JobId = job.Id, Reason = $"assigning again: {reason}" },
                    deadline: DateTime.UtcNow.AddSeconds(options.ReleaseTimeoutSeconds), cancellationToken: cancel).ConfigureAwait(false);
            }
            catch (RpcException e) when (!cancel.IsCancellationRequested)
            {
                lock (survivors) Drop(w, $"worker {w.Id} ({w.Address}): release failed: {e.Status.Detail}", lost: e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded);
            }
        })).ConfigureAwait(false);
        while (departures.TryDequeue(out var d)) Drop(d.Worker, d.Reason, lost: registry.StateOf(d.Worker.Id) != MembershipState.Draining);
        // Drained members hold nothing yet: they go at once.
        foreach (var id in Drained())
            if (survivors.FirstOrDefault(s => s.Id == id) is { } w) Drop(w, $"worker {w.Id} ({w.Address}): drained", lost: false);

        var newcomers = registry.TryReserveUpTo(Max - survivors.Count, job.Id, needed: Min - survivors.Count).ToList();
        await WaitForMinimumAsync(survivors, newcomers, why.Count > 0 ? string.Join("; ", why) : reason, cancel).ConfigureAwait(false);
        idleSeen = false;
        var all = survivors.Concat(newcomers).ToList();
        lock (gate)
        {
            foreach (var n in newcomers) everyone[n.Id] = n;
            members = all;
            departed.Dispose();
            departed = new CancellationTokenSource();
            if (!departures.IsEmpty) departed.Cancel();
        }
        Generation = generation;
        Workers = new GrpcJobWorkers(all, clients, options);
        job.Update(p => p with { Generation = generation, WorkerIds = [.. all.Select(w => w.Id)] });
        log.LogInformation("job {Job} generation {Generation}: assigning {World} worker(s) again ({Reason})", job.Id, generation, all.Count, reason);
    }

    public void Dispose()
    {
        registry.WorkerLost -= OnLost;
        registry.WorkerLeft -= OnLeft;
        registry.Changed -= OnChanged;
        departed.Dispose();
    }
}
