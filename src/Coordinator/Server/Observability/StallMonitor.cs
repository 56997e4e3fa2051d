using System.Globalization;
using Dtrain.Distributed;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>A stall found in one job: the workers it names (the laggards) and the line that says so.</summary>
public sealed record Stall(IReadOnlyList<string> Culprits, string Text);

/// <summary>
/// Hang diagnosis from the phases workers report with their heartbeats. A running job stalls when one of its workers
/// has been silent (no heartbeat) for <see cref="CoordinatorOptions.StallWarningSeconds"/>, or when a worker has waited
/// that long on another one (all-reduce: its left ring neighbour; pipeline: a neighbouring stage): the laggard is found
/// by following who waits on whom to a worker that is not waiting. Pure: <see cref="Diagnose"/> takes the records and the time.
/// </summary>
public static class StallDiagnosis
{
    internal static double Age(WorkerRecord w, DateTimeOffset now) => Math.Max(0, (now - w.LastHeartbeat).TotalSeconds);

    private static double InPhase(WorkerRecord w, DateTimeOffset now) => (w.Activity?.InPhase.TotalSeconds ?? 0) + Age(w, now);

    private static string Phase(WorkerRecord w) => w.Activity?.Phase is { Length: > 0 } p ? p : "unknown phase (no report yet)";

    /// <summary>"w3 (worker-3)": the id, and the name when it has one.</summary>
    public static string Label(string id, string name) => name == "" ? id : $"{id} ({name})";

    /// <summary>The stall of a job whose live workers are <paramref name="workers"/>, or null when none lags <paramref name="thresholdSeconds"/>.</summary>
    /// <param name="silentSeconds">How long without a heartbeat makes a worker silent (default: <paramref name="thresholdSeconds"/>).</param>
    /// <param name="names">Whether the text shows workers' names beside their ids (not for callers who may not list workers).</param>
    /// <param name="lateSeconds">
    /// A worker whose heartbeat is this late (e.g. two heartbeat intervals) is not where its last report says: when a
    /// chain of waits reaches it, it is the one waited on, not whoever it last said it waited on. Without this, a worker
    /// frozen while it waited (its report says "waiting on w1", and w1 now waits on it) reads as a stuck ring until its
    /// heartbeat is old enough to make it silent. Null: no such rule.
    /// </param>
    public static Stall? Diagnose(IReadOnlyList<WorkerRecord> workers, DateTimeOffset now, double thresholdSeconds, double? silentSeconds = null, bool names = true,
        double? lateSeconds = null)
    {
        string Label(WorkerRecord w) => names ? StallDiagnosis.Label(w.Id, w.Name) : w.Id;
        var live = workers.Where(w => w.State != MembershipState.Lost).ToList();
        if (live.Count == 0) return null;
        var byId = live.ToDictionary(w => w.Id);
        var silent = live.Where(w => Age(w, now) >= (silentSeconds ?? thresholdSeconds)).ToList();
        var waiting = live.Where(w => w.Activity is { } a && ActivityPhases.IsWaiting(a.Phase) && a.WaitingOn != "" && InPhase(w, now) >= thresholdSeconds).ToList();
        // Who each waiting worker ultimately waits on: follow "waiting on" to a worker that is not waiting (or silent).
        string? Root(WorkerRecord w)
        {
            var root = Follow(w);
            // A late worker's own report may be stale too (frozen while it waited): when its chain ends in a cycle, or at
            // a worker that has been in its phase for less time than this one says it has waited (it moved on since), the
            // late one is stuck, not whom it named.
            if (Age(w, now) >= lateSeconds && (root is null || (byId.TryGetValue(root, out var r) && r != w && InPhase(r, now) < InPhase(w, now)))) return w.Id;
            return root;
        }
        string? Follow(WorkerRecord w)
        {
            var seen = new HashSet<string>();
            var at = w;
            while (seen.Add(at.Id))
            {
                if (at != w && (!ActivityPhases.IsWaiting(Phase(at)) || silent.Contains(at) || Age(at, now) >= lateSeconds)) return at.Id;
                var next = at.Activity?.WaitingOn ?? "";
                if (next == "") return at == w ? null : at.Id;
                if (!byId.TryGetValue(next, out var n)) return next;   // waits on a worker outside the job's live ones
                at = n;
            }
            return null;   // a cycle: everyone waits on everyone
        }
        List<string> culprits;
        if (silent.Count > 0) culprits = [.. silent.Select(w => w.Id)];
        else if (waiting.Count > 0)
        {
            culprits = [.. waiting.Select(Root).OfType<string>().Distinct()];
            if (culprits.Count == 0)
                return new Stall([], string.Create(CultureInfo.InvariantCulture,
                    $"all {live.Count} workers wait on each other ({string.Join("; ", live.Select(w => Doing(w, now, Label(w))))}) — the ring is stuck"));
        }
        else return null;

        var parts = new List<string>();
        foreach (var id in culprits)
        {
            if (!byId.TryGetValue(id, out var c))
            {
                parts.Add($"{id} (not among the job's live workers) is waited on");
                continue;
            }
            var step = c.Activity is { Step: > 0 } a ? $", step {a.Step}" : "";
            parts.Add(string.Create(CultureInfo.InvariantCulture,
                $"{Label(c)} in {Describe(c)} for {InPhase(c, now):F0} s (last heartbeat {Age(c, now):F0} s ago){step}"));
        }
        var others = live.Where(w => !culprits.Contains(w.Id)).ToList();
        if (others.Count > 0)
        {
            var descriptions = others.Select(w =>
            {
                var root = ActivityPhases.IsWaiting(Phase(w)) ? Root(w) : null;
                var through = root is not null && root != w.Id && w.Activity!.WaitingOn != root ? $" (which waits on {root})" : "";
                return (w, text: Doing(w, now, Label(w), through));
            }).ToList();
            var same = descriptions.Select(d => Describe(d.w)).Distinct().Count() == 1 && descriptions.All(d => d.w.Activity?.WaitingOn is { Length: > 0 } on && culprits.Contains(on));
            parts.Add(same && others.Count > 1
                ? $"all others in {Describe(others[0])}"
                : (others.Count == 1 ? "" : "others: ") + string.Join("; ", descriptions.Select(d => d.text)));
        }
        return new Stall(culprits, string.Join("; ", parts));
    }

    /// <summary>"all-reduce reduce-scatter step 1/2 piece 3/8, waiting on w3".</summary>
    private static string Describe(WorkerRecord w) =>
        w.Activity is { } a ? WorkerActivity.Describe(a.Phase, a.Detail, a.WaitingOn) : Phase(w);

    private static string Doing(WorkerRecord w, DateTimeOffset now, string label, string through = "") =>
        string.Create(CultureInfo.InvariantCulture, $"{label} in {Describe(w)}{through} for {InPhase(w, now):F0} s");
}

/// <summary>
/// Watches running jobs for stalls (<see cref="StallDiagnosis"/>) every quarter of <see cref="CoordinatorOptions.StallWarningSeconds"/>
/// (at most every second): a new stall is logged as a warning and published to the job's watchers ("stall warning: ..."),
/// its end too. `dtrain status` asks <see cref="Describe"/>, which diagnoses afresh.
/// </summary>
public sealed class StallMonitor(CoordinatorOptions options, WorkerRegistry registry, JobManager jobs, TimeProvider clock, ILogger<StallMonitor> log) : BackgroundService
{
    private readonly Dictionary<string, (Stall Stall, DateTimeOffset Since)> current = [];

    /// <summary>Workers of the job, in the job's rank order (those the registry still knows).</summary>
    private List<WorkerRecord> WorkersOf(string jobId, IEnumerable<string> workerIds)
    {
        var order = workerIds.Select((id, i) => (id, i)).ToDictionary(x => x.id, x => x.i);
        return [.. registry.Snapshot().Where(w => w.JobId == jobId || order.ContainsKey(w.Id) && w.JobId == "" && w.State == MembershipState.Lost)
            .OrderBy(w => order.TryGetValue(w.Id, out var i) ? i : int.MaxValue)];
    }

    /// <summary>Silent: no heartbeat for the stall warning time, and at least two heartbeat intervals (a heartbeat is not late before).</summary>
    private double SilentSeconds => Math.Max(options.StallWarningSeconds, 2 * options.HeartbeatIntervalMs / 1000.0);

    /// <summary>Late: two heartbeat intervals without one; its last report no longer says where it is.</summary>
    private double LateSeconds => 2 * options.HeartbeatIntervalMs / 1000.0;

    private static bool Running(JobStatus status) => status is JobStatus.Running or JobStatus.Waiting;

    /// <summary>
    /// The job as `dtrain status` shows it, with its live fields: a row per worker and the stall line, if any (for a job
    /// that is not preparing or running: none). <paramref name="names"/>: whether workers' names are shown (callers who
    /// may list workers), else ids only. <see cref="ProtoMapper"/> builds the <c>JobInfo</c>.
    /// </summary>
    public JobView Describe(JobRecord job, bool names = true)
    {
        var (status, progress) = job.Read();
        if (!Running(status) && status != JobStatus.Preparing) return new JobView(status, progress, [], null, names);
        var now = clock.GetUtcNow();
        var workers = WorkersOf(job.Id, progress.WorkerIds);
        var stall = status == JobStatus.Preparing ? null : StallDiagnosis.Diagnose(workers, now, options.StallWarningSeconds, SilentSeconds, names, LateSeconds);
        return new JobView(status, progress, [.. workers.Select(w => new WorkerView(w, now, stall?.Culprits.Contains(w.Id) == true))], stall?.Text, names);
    }

    /// <summary>Whether the stall warning names this worker now (for `dtrain workers`).</summary>
    public IReadOnlySet<string> StalledWorkers()
    {
        lock (current) return current.Values.SelectMany(v => v.Stall.Culprits).ToHashSet();
    }

    /// <summary>One look at every running job; public for tests that drive it with a fake clock.</summary>
    public void Check()
    {
        var now = clock.GetUtcNow();
        var seen = new HashSet<string>();
        foreach (var job in jobs.List())
        {
            var (status, progress) = job.Read();
            if (!Running(status)) continue;
            seen.Add(job.Id);
            var workers = WorkersOf(job.Id, progress.WorkerIds);
            var stall = StallDiagnosis.Diagnose(workers, now, options.StallWarningSeconds, SilentSeconds, lateSeconds: LateSeconds);
            (Stall Stall, DateTimeOffset Since) before;
            bool had;
            lock (current) had = current.TryGetValue(job.Id, out before);
            if (stall is null)
            {
                if (!had) continue;
                lock (current) current.Remove(job.Id);
                var line = string.Create(CultureInfo.InvariantCulture, $"stall cleared after {(now - before.Since).TotalSeconds:F0} s (at step {progress.Step})");
                log.LogInformation("job {Id}: {Line}", job.Id, line);
                job.Log(line);
                continue;
            }
            if (had && before.Stall.Culprits.SequenceEqual(stall.Culprits))
            {
                lock (current) current[job.Id] = (stall, before.Since);
                continue;
            }
            lock (current) current[job.Id] = (stall, now);
            log.LogWarning("job {Id}: stall warning (Coordinator:StallWarningSeconds = {Seconds} s): {Text}", job.Id, options.StallWarningSeconds, stall.Text);
            // Watchers include submitters, who see worker ids but not names (`dtrain status` shows names to those who may list workers).
            var forWatchers = StallDiagnosis.Diagnose(workers, now, options.StallWarningSeconds, SilentSeconds, names: false, LateSeconds) ?? stall;
            job.Log($"stall warning: {forWatchers.Text}");
        }
        lock (current)
        {
            foreach (var gone in current.Keys.Where(k => !seen.Contains(k)).ToList()) current.Remove(gone);
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var period = TimeSpan.FromSeconds(Math.Clamp(options.StallWarningSeconds / 4, 0.1, 1));
        using var timer = new PeriodicTimer(period, clock);
        while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
        {
            try
            {
                Check();
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // Diagnosis must never take the coordinator down.
                log.LogError(e, "stall check failed");
            }
        }
    }
}
