using System.Collections.Concurrent;
using Dtrain.Cluster;
using Dtrain.Distributed;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// An elastic data-parallel job's workers, tracking membership through the registry's events and reaching each
/// worker through its <see cref="IWorkerHandle"/> (made by the constructor's connect: over gRPC in a cluster, in process in tests).
/// </summary>
public sealed class JobFleet : IJobFleet, IDisposable
{
    private readonly JobRecord job;
    private readonly WorkerRegistry registry;
    private readonly Func<WorkerRecord, IWorkerHandle> connect;
    private readonly CoordinatorOptions options;
    private readonly TimeProvider clock;
    private readonly ILogger log;
    private readonly Lock gate = new();
    private List<WorkerRecord> members;
    private readonly Dictionary<string, IWorkerHandle> everyone = [];
    private readonly ConcurrentQueue<(WorkerRecord Worker, string Reason)> departures = new();
    private CancellationTokenSource departed = new();
    private volatile bool idleSeen;
    // Completed (and replaced) at each change of the registry's membership: what a job below its minimum waits for.
    private TaskCompletionSource membershipChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public int Min { get; }
    public int Max { get; }
    public long Generation { get; private set; }
    public JobWorkers Workers { get; private set; }
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
    public IReadOnlyList<IWorkerHandle> Everyone
    {
        get { lock (gate) return [.. everyone.Values]; }
    }

    public JobFleet(JobRecord job, IReadOnlyList<WorkerRecord> workers, int min, int max, WorkerRegistry registry, Func<WorkerRecord, IWorkerHandle> connect,
        CoordinatorOptions options, ILogger log, TimeProvider? clock = null)
    {
        this.job = job;
        this.registry = registry;
        this.connect = connect;
        this.options = options;
        this.clock = clock ?? TimeProvider.System;
        this.log = log;
        members = [.. workers];
        Min = Math.Max(1, min);
        Max = Math.Max(max, workers.Count);
        Workers = Group(members);
        registry.WorkerLost += OnLost;
        registry.WorkerLeft += OnLeft;
        registry.Changed += OnChanged;
        Generation = job.NextGeneration();
        job.Update(p => p with { MinWorkers = Min, MaxWorkers = Max });
    }

    /// <summary>The handle of a worker, made once per worker for the job's life.</summary>
    private IWorkerHandle Handle(WorkerRecord w)
    {
        lock (gate)
        {
            if (!everyone.TryGetValue(w.Id, out var h)) everyone[w.Id] = h = connect(w);
            return h;
        }
    }

    private JobWorkers Group(IEnumerable<WorkerRecord> workers) => new([.. workers.Select(Handle)], options);

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

    private void OnLost(WorkerRecord w) => Depart(w, $"worker {w.Id} ({w.Address}) lost: no heartbeat for {options.WorkerTimeoutSeconds:F0}s at step {job.Progress.Step}{w.LastSeenDoing(clock.GetUtcNow())}");
    private void OnLeft(WorkerRecord w, string reason) => Depart(w, $"worker {w.Id} ({w.Address}) left after step {job.Progress.Step}: {reason}");
    private void OnChanged()
    {
        idleSeen = true;
        Interlocked.Exchange(ref membershipChanged, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    /// <summary>Completes at the registry's next membership change (a worker became idle, was released or uncordoned).</summary>
    private Task NextMembershipChange() => Volatile.Read(ref membershipChanged).Task;

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
        if (failure is JobFailure { PeerFailure: true } or OperationCanceledException)
        {
            // A peer's failure without a named culprit: the culprit is usually declared lost within one heartbeat timeout.
            using var either = CancellationTokenSource.CreateLinkedTokenSource(cancel, Departed);
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(options.WorkerTimeoutSeconds + 1), clock, either.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
            {
            }
            return Departed.IsCancellationRequested;
        }
        return false;
    }

    /// <summary>
    /// The members that go on into generation <see cref="Generation"/>, as a change of membership (re-forming or
    /// assigning again) drops those that departed, failed or drained — each logged once, lost or merely let go.
    /// </summary>
    private sealed class Change(JobFleet fleet, long generation, string logAs)
    {
        public readonly long Generation = generation;
        public List<WorkerRecord> Survivors = fleet.Current();
        public readonly List<string> Gone = [];
        public readonly List<string> Why = [];

        public void Drop(WorkerRecord w, string cause, bool lost)
        {
            lock (this)
            {
                if (Survivors.RemoveAll(s => s.Id == w.Id) == 0) return;
                Gone.Add(w.Id);
                Why.Add(cause);
            }
            if (lost) fleet.registry.MarkLost(w.Id, cause);
            else fleet.registry.Detach(w.Id, fleet.job.Id);
            fleet.job.Log($"generation {Generation}: {logAs}{cause}");
        }

        /// <summary>Drops every member that departed (lost or left; a drained one is let go, not lost) since the last look.</summary>
        public void DropDeparted()
        {
            while (fleet.departures.TryDequeue(out var d)) Drop(d.Worker, d.Reason, lost: fleet.registry.StateOf(d.Worker.Id) != MembershipState.Draining);
        }

        public string Cause(string reason) => Why.Count > 0 ? string.Join("; ", Why) : reason;
    }

    private List<WorkerRecord> Current()
    {
        lock (gate) return [.. members];
    }

    /// <summary>Makes <paramref name="all"/> the members of <paramref name="generation"/>: the workers, a fresh departure signal (already raised by a departure that came meanwhile) and the job's record.</summary>
    private void Commit(List<WorkerRecord> all, long generation)
    {
        var workers = Group(all);
        lock (gate)
        {
            members = all;
            departed.Dispose();
            departed = new CancellationTokenSource();
            // A departure raised while re-forming (after the last look) belongs to the new generation.
            if (!departures.IsEmpty) departed.Cancel();
        }
        Generation = generation;
        Workers = workers;
        job.Update(p => p with { Generation = generation, WorkerIds = [.. all.Select(w => w.Id)] });
    }

    public async Task<Reconfiguration> ReconfigureAsync(string reason, AssignmentBuilder assign, CancellationToken cancel)
    {
        var change = new Change(this, Generation + 1, "without ");
        var generation = change.Generation;
        var joined = new List<string>();
        change.DropDeparted();

        // Stop every survivor's steps; where each stands decides the committed step (a step is applied whole or not at all).
        var standing = new Dictionary<string, StepStanding>();
        await Task.WhenAll(change.Survivors.ToList().Select(async w =>
        {
            try
            {
                var at = await Handle(w).AbortAsync(job.Id, generation, reason, cancel).ConfigureAwait(false);
                lock (standing) standing[w.Id] = at;
            }
            catch (JobFailure e) when (!cancel.IsCancellationRequested)
            {
                // Does not know the job: a newcomer of a re-forming that failed half way never got it; it is healthy and idle.
                change.Drop(w, $"worker {w.Id} ({w.Address}): abort failed: {e.Detail ?? e.Message}", lost: !e.UnknownJob);
            }
        })).ConfigureAwait(false);
        change.DropDeparted();
        var survivors = change.Survivors;
        survivors.RemoveAll(s => !standing.ContainsKey(s.Id));
        if (survivors.Count == 0) throw new JobFailure($"no worker of the job is left: {change.Cause(reason)}") { Terminal = true };
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
        await WaitForMinimumAsync(survivors, newcomers, change.Cause(reason), cancel).ConfigureAwait(false);
        idleSeen = false;

        var all = survivors.Concat(newcomers).ToList();
        var world = all.Count;
        var group = Group(all);
        var peers = group.Peers;
        lock (gate) members = all;
        try
        {
            // Survivors re-form the ring while newcomers are assigned into it: both sides connect at once.
            var reconfigured = Group(survivors).ReconfigureAsync(r => new RingMembership(job.Id, generation, r, world, peers, next), cancel);
            var assigned = newcomers.Count == 0 ? Task.FromResult(Array.Empty<AssignResult>())
                : Group(newcomers).AssignAsync(r => assign(survivors.Count + r, world, generation, next, peers), cancel);
            await Task.WhenAll(reconfigured, assigned).ConfigureAwait(false);
            // Newcomers, replicas behind the committed step, and any standing at it with other parameters take the state from
            // one that stands at it, worker to worker. The last: a newcomer of a re-forming that failed after it was assigned
            // but before it took the state stands at the committed step too, with the parameters it was built with.
            var pullers = all.Where(w => !standing.TryGetValue(w.Id, out var s) || s.NextStep != next || !ParameterChecksums.Agree(s.ParameterChecksum, expected)).ToList();
            if (pullers.Count > 0)
            {
                var from = new ClusterPeer(all.IndexOf(source), source.Id, source.Address, source.Certificate);
                var synced = await Group(pullers).SyncStateAsync(new SyncSource(job.Id, generation, from, next), cancel).ConfigureAwait(false);
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
                change.Gone.Add(w.Id);
                job.Log($"generation {generation}: without worker {w.Id} ({w.Address}): drained; it stays up, cordoned");
            }
            await JobWorkers.ReleaseAsync(leaving.Select(Handle), registry, job.Id, "drained", options.ReleaseTimeoutSeconds, log).ConfigureAwait(false);
            foreach (var w in leaving) registry.Detach(w.Id, job.Id);
        }
        joined.AddRange(newcomers.Select(n => n.Id));
        Commit(all, generation);
        var gone = change.Gone;
        log.LogInformation("job {Job} generation {Generation}: {World} worker(s) from step {Step}{Gone}{Joined}", job.Id, generation, world, next,
            gone.Count > 0 ? $"; without {string.Join(", ", gone)}" : "", joined.Count > 0 ? $"; admitted {string.Join(", ", joined)}" : "");
        return new Reconfiguration(next, generation, gone, joined, [.. all.Select(w => w.Id)]);
    }

    /// <summary>
    /// Below the minimum, waits (visibly, state waiting) for idle workers to reserve, at most Coordinator:WaitForWorkersSeconds;
    /// then the job fails. It tries again at each change of the registry's membership, and refreshes the waiting message's
    /// countdown every Coordinator:WaitingRefreshMs.
    /// </summary>
    private async Task WaitForMinimumAsync(List<WorkerRecord> survivors, List<WorkerRecord> newcomers, string after, CancellationToken cancel)
    {
        if (survivors.Count + newcomers.Count >= Min) return;
        var waitUntil = clock.GetUtcNow().AddSeconds(options.WaitForWorkersSeconds);
        // A worker that became idle since the caller's reservation is taken now; later ones wake the wait.
        var change = NextMembershipChange();
        newcomers.AddRange(registry.TryReserveUpTo(Max - survivors.Count - newcomers.Count, job.Id, needed: Min - survivors.Count - newcomers.Count));
        var waited = false;
        while (survivors.Count + newcomers.Count < Min)
        {
            waited = true;
            var left = (waitUntil - clock.GetUtcNow()).TotalSeconds;
            if (left <= 0)
            {
                foreach (var n in newcomers) registry.Detach(n.Id, job.Id);
                throw new JobFailure($"fewer than the minimum of {Min} worker(s) for {options.WaitForWorkersSeconds:F0}s after {after}") { Terminal = true };
            }
            var missing = Min - survivors.Count - newcomers.Count;
            job.Transition(JobTrigger.Wait, $"waiting for {missing} more worker(s), {left:F0} s left");
            using (var woken = CancellationTokenSource.CreateLinkedTokenSource(cancel))
            {
                var refresh = Task.Delay(TimeSpan.FromMilliseconds(Math.Min(options.WaitingRefreshMs, Math.Ceiling(left * 1000))), clock, woken.Token);
                await Task.WhenAny(change, refresh).ConfigureAwait(false);
                await woken.CancelAsync().ConfigureAwait(false);
            }
            cancel.ThrowIfCancellationRequested();
            change = NextMembershipChange();
            newcomers.AddRange(registry.TryReserveUpTo(Max - survivors.Count - newcomers.Count, job.Id, needed: Min - survivors.Count - newcomers.Count));
        }
        if (waited) job.Transition(JobTrigger.Run, "");
    }

    public async Task ReassignAsync(string reason, CancellationToken cancel)
    {
        var change = new Change(this, Generation + 1, "assigning again without ");
        change.DropDeparted();

        // No step ran: what the others built of the failed assignment is released (a worker that never got it answers all the
        // same, and Assign would replace it anyway). Only one that cannot be reached is dropped.
        await Task.WhenAll(change.Survivors.ToList().Select(async w =>
        {
            try
            {
                await Handle(w).ReleaseAsync(job.Id, $"assigning again: {reason}", options.ReleaseTimeoutSeconds, cancel).ConfigureAwait(false);
            }
            catch (JobFailure e) when (!cancel.IsCancellationRequested)
            {
                change.Drop(w, $"worker {w.Id} ({w.Address}): release failed: {e.Detail ?? e.Message}", lost: e.Unreachable is not null);
            }
        })).ConfigureAwait(false);
        change.DropDeparted();
        // Drained members hold nothing yet: they go at once.
        foreach (var id in Drained())
            if (change.Survivors.FirstOrDefault(s => s.Id == id) is { } w) change.Drop(w, $"worker {w.Id} ({w.Address}): drained", lost: false);

        var survivors = change.Survivors;
        var newcomers = registry.TryReserveUpTo(Max - survivors.Count, job.Id, needed: Min - survivors.Count).ToList();
        await WaitForMinimumAsync(survivors, newcomers, change.Cause(reason), cancel).ConfigureAwait(false);
        idleSeen = false;
        var all = survivors.Concat(newcomers).ToList();
        Commit(all, change.Generation);
        log.LogInformation("job {Job} generation {Generation}: assigning {World} worker(s) again ({Reason})", job.Id, change.Generation, all.Count, reason);
    }

    public void Dispose()
    {
        registry.WorkerLost -= OnLost;
        registry.WorkerLeft -= OnLeft;
        registry.Changed -= OnChanged;
        departed.Dispose();
    }
}
