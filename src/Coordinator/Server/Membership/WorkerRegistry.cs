using Dtrain.Cluster;
using Dtrain.Distributed;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// Membership (states and their one transition table: <see cref="MembershipTable"/>). Transitions: Register → Joining; first heartbeat → Idle (Cordoned if it was cordoned); reserved for a
/// job → Training; job ends → Idle; Leave while training → Draining (removed when its job ends); Leave while idle →
/// removed; no heartbeat for WorkerTimeout → Lost (its job fails or goes on without it; a later heartbeat is answered
/// "unknown" and the worker registers anew). An admin's cordon keeps a worker from new jobs (Idle → Cordoned); a drain
/// also takes it out of its job at a step boundary (Training → Draining → Cordoned, the process stays up); uncordon
/// returns it (Cordoned → Idle, a drain not yet carried out is called off).
/// Ids (w1, w2, ...) are the registry's; an operator's name never has that form and one live worker holds it at a time.
/// </summary>
public sealed class WorkerRegistry(CoordinatorOptions options, TimeProvider clock, ILogger<WorkerRegistry> log)
{
    private readonly Lock gate = new();
    private readonly Dictionary<string, WorkerRecord> workers = [];
    private int nextId;
    // Workers the head of the job queue waits for (0: none waits); see HoldForQueue.
    private int queueNeed;

    /// <summary>Raised (outside the lock) when a worker is declared lost, with its id and the job it had.</summary>
    public event Action<WorkerRecord>? WorkerLost;
    /// <summary>Raised (outside the lock) when a worker that holds a job leaves (drains), with its record and reason.</summary>
    public event Action<WorkerRecord, string>? WorkerLeft;
    /// <summary>Raised when workers become available, for the scheduler.</summary>
    public event Action? Changed;
    /// <summary>Raised (outside the lock) when a worker is admitted (registers), with its record.</summary>
    public event Action<WorkerRecord>? WorkerRegistered;
    /// <summary>Raised (outside the lock) when a worker leaves, idle or training, with its record and reason.</summary>
    public event Action<WorkerRecord, string>? WorkerDeparted;
    /// <summary>Raised (outside the lock) when an admin drains a worker that holds a job, with its record and reason; the process stays up.</summary>
    public event Action<WorkerRecord, string>? DrainRequested;

    /// <summary>
    /// Adds a worker (Joining) under a new id. With TLS, <paramref name="certify"/> signs its certificate for that id
    /// and returns the certificate's SHA-256, which the record pins: heartbeats and leave must come with it.
    /// <see cref="WorkerRegistration.Key"/> is the SHA-256 of the worker's own public key (its signing request's; "" without TLS): a
    /// live worker's name and advertised address belong to the key that registered them until it leaves or is lost. A
    /// registration with the same key is that worker again and replaces it; with another key it is refused, naming the
    /// holder (<see cref="WorkerNameTakenException"/>). Without a key (plaintext) a name is the holder's own address's:
    /// from there a registration replaces it, from anywhere else it is refused.
    /// </summary>
    public WorkerRecord Register(WorkerRegistration request, Func<string, string>? certify = null)
    {
        var key = request.Key ?? "";
        if (!Uri.TryCreate(request.Address, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw new ArgumentException($"address \"{request.Address}\" must be an http(s) URL the coordinator and peers can reach");
        var name = request.Name?.Trim() ?? "";
        if (name != "" && WorkerNames.Problem(name) is { } problem) throw new ArgumentException(problem);
        var endpoint = Endpoint(uri);
        WorkerRecord record;
        var replaced = new List<WorkerRecord>();
        List<WorkerRecord> lost;
        lock (gate)
        {
            if (name != "" && workers.Values.FirstOrDefault(w => w.Name == name && w.State != MembershipState.Lost) is { } holder)
            {
                if (holder.Key.Length > 0)
                {
                    // Anyone with the bootstrap certificate or a join token may register, but only the holder has its key.
                    if (!SameKey(holder.Key, key))
                        throw new WorkerNameTakenException($"worker name \"{name}\" is held by worker {holder.Id} at {holder.Address} ({Describe(holder)}), registered with another key " +
                            $"(sha256 {holder.Key[..16]}…): a name belongs to the key that registered it until that worker leaves or is lost; give this worker another --name (Worker:Name), " +
                            "or stop that one (a restarted worker, which has a new key, is admitted once its old registration is lost)");
                }
                // The same name from the holder's own address is that worker restarted (its old process cannot still
                // serve there): the new registration replaces the old one. From anywhere else it is a second worker.
                else if (holder.Address != request.Address)
                    throw new WorkerNameTakenException($"worker name \"{name}\" is held by worker {holder.Id} at {holder.Address} ({Describe(holder)}); " +
                        "give this worker another --name (Worker:Name), or stop that one (a lost worker's name is free again)");
                replaced.Add(holder);
            }
            // With keys, an advertised address is the live worker's that registered it: another key cannot claim it
            // (the coordinator would hand that worker's address to jobs as someone else's).
            if (key.Length > 0)
            {
                foreach (var w in workers.Values.Where(w => w.State != MembershipState.Lost && !replaced.Contains(w) && w.Endpoint == endpoint))
                {
                    if (!SameKey(w.Key, key))
                        throw new WorkerNameTakenException($"address {request.Address} is held by worker {w.Id}{(w.Name == "" ? "" : $" \"{w.Name}\"")} ({Describe(w)}), registered with another key: " +
                            "a worker advertises the address it serves on (--advertise, --port); a restarted worker is admitted there once its old registration is lost");
                    replaced.Add(w);
                }
            }
            foreach (var w in replaced) w.Apply(MembershipEvent.Lose);
            lost = [.. replaced.Select(w => w.Clone())];
            var live = workers.Values.Count(w => w.State != MembershipState.Lost);
            if (options.MaxWorkers > 0 && live >= options.MaxWorkers)
                throw new ClusterFullException($"the cluster is full: {live} workers are registered and Coordinator:MaxWorkers is {options.MaxWorkers}; this worker ({request.Address}) is not admitted");
            var id = WorkerNames.Id(++nextId);
            record = new WorkerRecord(id, name, request.Address, request.Capabilities ?? WorkerCapabilities.Unknown, clock.GetUtcNow())
            {
                Key = key,
                Token = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16)),
                Certificate = certify?.Invoke(id) ?? "",
                Cordoned = request.Cordoned,
                HttpAddress = Uri.TryCreate(request.HttpAddress, UriKind.Absolute, out var http) && http.Scheme is "http" or "https" ? request.HttpAddress : "",
                CordonedBy = request.Cordoned ? "cordoned before it registered again" : "",
                Message = request.Cordoned ? "cordoned before it registered again" : "",
            };
            workers[id] = record;
        }
        foreach (var old in lost)
        {
            log.LogWarning("worker {Id} ({Address}) replaced by {New}: {Why}", old.Id, old.Address, record.Id,
                old.Key.Length > 0 ? "the same worker (its key) registered again" : $"a worker named {name} registered again from its address");
            WorkerLost?.Invoke(old);
        }
        log.LogInformation("worker {Id}{Name} registered from {Address} ({Cores} cores, {Device}){Cordoned}", record.Id, name == "" ? "" : $" \"{name}\"", record.Address,
            record.Capabilities.Cores, record.Capabilities.Device, record.Cordoned ? ", cordoned" : "");
        WorkerRegistered?.Invoke(record.Clone());
        return record;
    }

    /// <summary>Records a heartbeat; false (register again) for an unknown or lost worker, or another registration's token or certificate.</summary>
    public bool Heartbeat(string id, string token, string? certificate = null) => Heartbeat(id, token, certificate, out _);

    /// <inheritdoc cref="Heartbeat(string, string, string?)"/>
    /// <param name="cordoned">Whether the worker is cordoned (it remembers that for its next registration).</param>
    public bool Heartbeat(string id, string token, string? certificate, out bool cordoned)
    {
        bool becameIdle;
        lock (gate)
        {
            cordoned = false;
            if (!workers.TryGetValue(id, out var w) || w.State == MembershipState.Lost || !w.Holds(token, certificate)) return false;
            w.LastHeartbeat = clock.GetUtcNow();
            cordoned = w.Cordoned;
            becameIdle = w.State == MembershipState.Joining;
            if (becameIdle) w.Apply(w.Cordoned ? MembershipEvent.ReadyCordoned : MembershipEvent.Ready);
        }
        if (becameIdle) Changed?.Invoke();
        return true;
    }

    /// <summary>Keeps what a worker said it is doing with its last heartbeat (<see cref="WorkerRecord.Activity"/>); ignored for an unknown or lost worker.</summary>
    public void Report(string id, ActivitySnapshot? activity)
    {
        if (activity is null) return;
        lock (gate)
        {
            if (workers.TryGetValue(id, out var w) && w.State != MembershipState.Lost) w.Activity = activity;
        }
    }

    /// <summary>A worker leaves (its process stops); ignored for an unknown id or another registration's token or certificate.</summary>
    public void Leave(string id, string token, string reason, string? certificate = null)
    {
        WorkerRecord? draining = null;
        WorkerRecord left;
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || !w.Holds(token, certificate) || w.Leaving) return;
            if (w.State is MembershipState.Training or MembershipState.Draining)
            {
                w.Apply(MembershipEvent.Leave);
                w.Leaving = true;
                w.Message = $"leaving: {reason}";
                draining = w.Clone();
            }
            else workers.Remove(id);
            left = w.Clone();
        }
        log.LogInformation("worker {Id} leaves: {Reason}{Job}", id, reason, draining is null ? "" : $" (draining from job {draining.JobId})");
        WorkerDeparted?.Invoke(left, reason);
        if (draining is not null) WorkerLeft?.Invoke(draining, reason);
    }

    /// <summary>For a known worker: whether <paramref name="token"/> is its registration's, and the SHA-256 of its pinned certificate ("" without TLS); null for an unknown id.</summary>
    public (bool TokenMatches, string Certificate)? Claim(string id, string token)
    {
        lock (gate) return workers.TryGetValue(id, out var w) ? (w.Holds(token, w.Certificate), w.Certificate) : null;
    }

    /// <summary>
    /// An admin cordons a worker (by id, or by the name a live worker holds): it takes no new job. With
    /// <paramref name="drain"/> it also leaves its job at the next step boundary (<see cref="DrainsOf"/>; a pipeline
    /// job fails) and stays up, cordoned. Idempotent. <paramref name="by"/> names who asked, for the listing.
    /// </summary>
    public WorkerRecord Cordon(string worker, bool drain, string by)
    {
        WorkerRecord result;
        WorkerRecord? drained = null;
        var verb = drain ? "drained" : "cordoned";
        lock (gate)
        {
            var w = Find(worker);
            if (w.State == MembershipState.Lost)
                throw new InvalidOperationException($"worker {w.Id} ({w.Address}) is lost: there is nothing to {(drain ? "drain" : "cordon")}; it is forgotten {10 * options.WorkerTimeoutSeconds:F0}s after its last heartbeat, and registers anew if it comes back");
            if (!w.Leaving)
            {
                w.Cordoned = true;
                if (w.CordonedBy == "" || drain) w.CordonedBy = $"{verb} by {by}";
                switch (w.State)
                {
                    case MembershipState.Idle:
                        w.Apply(MembershipEvent.Cordon);
                        w.Message = $"{verb} by {by}";
                        break;
                    case MembershipState.Joining:
                        w.Message = $"{verb} by {by}";
                        break;
                    case MembershipState.Training when drain:
                        w.Apply(MembershipEvent.Drain);
                        w.Message = $"drained by {by}: leaves {w.JobId} at the next step boundary";
                        drained = w.Clone();
                        break;
                    case MembershipState.Training when w.Message == "":
                        w.Message = $"cordoned by {by}: keeps {w.JobId}, takes no new job";
                        break;
                }
            }
            result = w.Clone();
        }
        log.LogInformation("worker {Id} {Verb} by {By}{Job}", result.Id, verb, by, drained is null ? "" : $": leaves job {drained.JobId} at the next step boundary");
        if (drained is not null) DrainRequested?.Invoke(drained, $"drained by {by}");
        return result;
    }

    /// <summary>Undoes a cordon or a drain (by id or name): an idle cordoned worker is idle again; one whose drain has not happened yet keeps its job.</summary>
    public WorkerRecord Uncordon(string worker, string by)
    {
        WorkerRecord result;
        var freed = false;
        lock (gate)
        {
            var w = Find(worker);
            if (w.State == MembershipState.Lost) throw new InvalidOperationException($"worker {w.Id} ({w.Address}) is lost: there is nothing to uncordon");
            if (w.Leaving) throw new InvalidOperationException($"worker {w.Id} ({w.Address}) is shutting down ({w.Message}); it cannot be uncordoned");
            w.Cordoned = false;
            w.CordonedBy = "";
            w.Message = "";
            if (w.State == MembershipState.Cordoned)
            {
                w.Apply(MembershipEvent.Uncordon);
                freed = true;
            }
            else if (w.State == MembershipState.Draining) w.Apply(MembershipEvent.Uncordon);
            result = w.Clone();
        }
        log.LogInformation("worker {Id} uncordoned by {By}", result.Id, by);
        if (freed) Changed?.Invoke();
        return result;
    }

    /// <summary>Workers of <paramref name="jobId"/> an admin drained that have not left it yet (not those shutting down: they are departures).</summary>
    public IReadOnlyList<string> DrainsOf(string jobId)
    {
        lock (gate) return [.. workers.Values.Where(w => w.JobId == jobId && w.State == MembershipState.Draining && !w.Leaving).Select(w => w.Id)];
    }

    /// <summary>Sets what <c>dtrain workers</c> says about a worker (e.g. why its drain waits).</summary>
    public void SetMessage(string id, string message)
    {
        lock (gate)
        {
            if (workers.TryGetValue(id, out var w)) w.Message = message;
        }
    }

    /// <summary>A worker by id, else by the name a live worker holds (else a lost one's); KeyNotFoundException naming what exists.</summary>
    private WorkerRecord Find(string worker)
    {
        if (workers.TryGetValue(worker, out var w)) return w;
        var named = workers.Values.Where(x => x.Name == worker).OrderBy(x => x.State == MembershipState.Lost).ThenByDescending(x => x.Registered).FirstOrDefault();
        if (named is not null && !WorkerNames.IsId(worker)) return named;
        throw new KeyNotFoundException($"no worker with id or name \"{worker}\"; `dtrain workers` lists them ({(workers.Count == 0 ? "none is registered" : string.Join(", ", workers.Values.OrderBy(x => x.Registered).Take(8).Select(x => x.Name == "" ? x.Id : $"{x.Id} {x.Name}")))})");
    }

    public IReadOnlyList<WorkerRecord> Snapshot()
    {
        lock (gate) return [.. workers.Values.OrderBy(w => w.Registered).Select(w => w.Clone())];
    }

    public int IdleCount()
    {
        lock (gate) return workers.Values.Count(w => w.State == MembershipState.Idle);
    }

    /// <summary>Idle workers a running job may grow onto: the idle ones not held for the head of the job queue (<see cref="HoldForQueue"/>).</summary>
    public int FreeCount()
    {
        lock (gate) return FreeLocked();
    }

    /// <summary>What the scheduler sees: idle workers, free ones (idle, not held for the queue), workers that can take jobs (not cordoned, draining or lost), cordoned ones, and all that are not lost.</summary>
    public ClusterCapacity Capacity()
    {
        lock (gate)
        {
            var idle = workers.Values.Count(w => w.State == MembershipState.Idle);
            return new ClusterCapacity(idle, FreeLocked(), SchedulableLocked(), workers.Values.Count(w => w.Cordoned && w.State != MembershipState.Lost), workers.Values.Count(w => w.State != MembershipState.Lost));
        }
    }

    /// <summary>
    /// The head of the job queue waits for <paramref name="need"/> workers (0: none waits). Once the workers that can
    /// take jobs are enough for it — it only waits for running jobs to end — idle workers are held for it: running
    /// elastic jobs do not grow onto them (<see cref="TryReserveUpTo"/>), so the head goes first.
    /// </summary>
    public void HoldForQueue(int need)
    {
        lock (gate) queueNeed = Math.Max(0, need);
    }

    private int SchedulableLocked() => workers.Values.Count(w => !w.Cordoned && w.State is MembershipState.Joining or MembershipState.Idle or MembershipState.Training);

    private int FreeLocked()
    {
        var idle = workers.Values.Count(w => w.State == MembershipState.Idle);
        var held = queueNeed > 0 && SchedulableLocked() >= queueNeed ? Math.Min(idle, queueNeed) : 0;
        return idle - held;
    }

    /// <summary>Reserves <paramref name="count"/> idle workers (0 = all idle, at least one) for a job, oldest first; null when not enough are idle.</summary>
    public IReadOnlyList<WorkerRecord>? TryReserve(int count, string jobId)
    {
        lock (gate)
        {
            var idle = workers.Values.Where(w => w.State == MembershipState.Idle).OrderBy(w => w.Registered).ToList();
            var n = count == 0 ? idle.Count : count;
            if (n == 0 || idle.Count < n) return null;
            var chosen = idle.Take(n).ToList();
            foreach (var w in chosen) { w.Apply(MembershipEvent.Reserve); w.JobId = jobId; }
            return [.. chosen.Select(w => w.Clone())];
        }
    }

    /// <summary>
    /// Reserves up to <paramref name="max"/> idle workers (oldest first) for a running job that can grow; possibly none.
    /// Workers held for the queue (<see cref="HoldForQueue"/>) are taken only for the <paramref name="needed"/> a job
    /// needs to stay at its minimum: keeping a running job alive comes before starting the next one.
    /// </summary>
    public IReadOnlyList<WorkerRecord> TryReserveUpTo(int max, string jobId, int needed = 0)
    {
        if (max <= 0) return [];
        lock (gate)
        {
            var idle = workers.Values.Count(w => w.State == MembershipState.Idle);
            var take = Math.Min(max, Math.Max(FreeLocked(), Math.Min(idle, needed)));
            var chosen = workers.Values.Where(w => w.State == MembershipState.Idle).OrderBy(w => w.Registered).Take(take).ToList();
            foreach (var w in chosen) { w.Apply(MembershipEvent.Reserve); w.JobId = jobId; }
            return [.. chosen.Select(w => w.Clone())];
        }
    }

    /// <summary>A job continues without this worker: one shutting down is removed, a drained or cordoned one is cordoned, one still training returns to Idle, a lost one stays lost.</summary>
    public void Detach(string id, string jobId)
    {
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || w.JobId != jobId) return;
            Settle(w);
        }
        Changed?.Invoke();
    }

    /// <summary>Returns a job's workers to Idle (those shutting down are removed, cordoned ones stay cordoned, lost ones stay lost).</summary>
    public void Release(string jobId)
    {
        lock (gate)
        {
            foreach (var w in workers.Values.Where(w => w.JobId == jobId).ToList()) Settle(w);
        }
        Changed?.Invoke();
    }

    /// <summary>Where a worker goes when it leaves its job (under the lock).</summary>
    private void Settle(WorkerRecord w)
    {
        var job = w.JobId;
        w.JobId = "";
        if (w.State == MembershipState.Draining && w.Leaving) workers.Remove(w.Id);
        else if (w.State is MembershipState.Training or MembershipState.Draining)
        {
            if (w.Cordoned)
            {
                w.Message = w.State == MembershipState.Draining ? $"{w.CordonedBy}; left {job}" : $"{w.CordonedBy}; {job} ended";
                w.Apply(MembershipEvent.ReleaseCordoned);
            }
            else w.Apply(MembershipEvent.Release);
        }
    }

    public MembershipState StateOf(string id)
    {
        lock (gate) return workers.TryGetValue(id, out var w) ? w.State : MembershipState.Lost;
    }

    /// <summary>Declares a worker lost now (it could not be reached), so it is not given the next job.</summary>
    public void MarkLost(string id, string reason)
    {
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || w.State == MembershipState.Lost) return;
            w.Apply(MembershipEvent.Lose);
        }
        log.LogWarning("worker {Id} marked lost: {Reason}", id, reason);
    }

    /// <summary>Declares workers without a recent heartbeat lost.</summary>
    public void Sweep()
    {
        var lost = new List<WorkerRecord>();
        var now = clock.GetUtcNow();
        lock (gate)
        {
            foreach (var w in workers.Values)
            {
                if (w.State == MembershipState.Lost) continue;
                if ((now - w.LastHeartbeat).TotalSeconds > options.WorkerTimeoutSeconds)
                {
                    w.Apply(MembershipEvent.Lose);
                    lost.Add(w.Clone());
                }
            }
            // Lost workers without a job are forgotten after a while; the listing keeps them visible meanwhile.
            foreach (var w in workers.Values.Where(w => w.State == MembershipState.Lost && w.JobId == "" && (now - w.LastHeartbeat).TotalSeconds > 10 * options.WorkerTimeoutSeconds).ToList())
                workers.Remove(w.Id);
        }
        foreach (var w in lost)
        {
            log.LogWarning("worker {Id} ({Address}) lost: no heartbeat for {Seconds:F1}s{Job}{Activity}", w.Id, w.Address, (now - w.LastHeartbeat).TotalSeconds, w.JobId == "" ? "" : $" during job {w.JobId}", w.LastSeenDoing(now));
            WorkerLost?.Invoke(w);
        }
    }

    private static bool SameKey(string a, string b) => a.Length > 0 && string.Equals(a, b, StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// scheme://host:port of an advertised address, as compared between workers: case, a trailing slash, default ports,
    /// IP spellings (127.1, an IPv4-mapped IPv6 address) and localhost (as 127.0.0.1) aside. Other host names are not resolved.
    /// </summary>
    internal static string Endpoint(Uri uri)
    {
        var host = uri.Host.ToLowerInvariant().TrimEnd('.');
        if (host == "localhost") host = "127.0.0.1";
        else if (System.Net.IPAddress.TryParse(host.Trim('[', ']'), out var ip))
            host = ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4().ToString() : ip.ToString();
        return $"{uri.Scheme}://{host}:{uri.Port}";
    }

    private static string Describe(WorkerRecord w) =>
        w.State.ToString().ToLowerInvariant() + (w.JobId == "" ? "" : $" in {w.JobId}") + ", last heartbeat " + w.LastHeartbeat.ToString("u", System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>The registry's counts for the scheduler (see <see cref="WorkerRegistry.Capacity"/>).</summary>
public readonly record struct ClusterCapacity(int Idle, int Free, int Schedulable, int Cordoned, int Live);

/// <summary>A worker asked for a name (or, with TLS, an address) a live worker holds under another key or address (gRPC ALREADY_EXISTS).</summary>
public sealed class WorkerNameTakenException(string message) : InvalidOperationException(message);

/// <summary>Coordinator:MaxWorkers workers are registered already (gRPC RESOURCE_EXHAUSTED).</summary>
public sealed class ClusterFullException(string message) : InvalidOperationException(message);

/// <summary>What the coordinator knows about one worker.</summary>
public sealed class WorkerRecord(string id, string name, string address, WorkerCapabilities capabilities, DateTimeOffset registered)
{
    public string Id { get; } = id;
    /// <summary>The operator's name for it ("" when none was given); never of the form of an id.</summary>
    public string Name { get; } = name;
    public string Address { get; } = address;
    /// <summary>The address as compared with other workers' (<see cref="WorkerRegistry.Endpoint"/>).</summary>
    public string Endpoint { get; } = Uri.TryCreate(address, UriKind.Absolute, out var u) ? WorkerRegistry.Endpoint(u) : address;
    public WorkerCapabilities Capabilities { get; } = capabilities;
    public DateTimeOffset Registered { get; } = registered;
    public DateTimeOffset LastHeartbeat { get; set; } = registered;
    /// <summary>Changed only through <see cref="Apply"/> (the table of <see cref="MembershipTable"/>).</summary>
    public MembershipState State { get; private set; } = MembershipState.Joining;

    /// <summary>Moves the worker by one transition of <see cref="MembershipTable.Table"/>; <see cref="InvalidTransitionException"/> when it does not allow it.</summary>
    public void Apply(MembershipEvent happened) => State = MembershipTable.Next($"worker {Id}", State, happened);
    public string JobId { get; set; } = "";
    /// <summary>This registration's secret: heartbeats and leave must carry it.</summary>
    public string Token { get; init; } = "";
    /// <summary>With TLS: SHA-256 (hex) of the worker's public key (SubjectPublicKeyInfo of its signing request), which owns its name and address; "" without TLS.</summary>
    public string Key { get; init; } = "";
    /// <summary>With TLS: SHA-256 (hex) of the certificate the coordinator issued to this registration; "" without TLS.</summary>
    public string Certificate { get; init; } = "";
    /// <summary>Takes no new job (cordon or drain), until uncordoned.</summary>
    public bool Cordoned { get; set; }
    /// <summary>The process is shutting down (it called Leave): it is removed once its job lets it go.</summary>
    public bool Leaving { get; set; }
    /// <summary>What is happening to it, for the listing (who cordoned it, why a drain waits).</summary>
    public string Message { get; set; } = "";
    /// <summary>"drained by alice", "cordoned by bob": who took it out of scheduling ("" when not cordoned).</summary>
    public string CordonedBy { get; set; } = "";
    /// <summary>What it said it was doing with its last heartbeat (phase, step, time in phase then); null before its first report.</summary>
    public ActivitySnapshot? Activity { get; set; }
    /// <summary>Its HTTP listener for Prometheus (<see cref="WorkerRegistration.HttpAddress"/>); "" when it has none.</summary>
    public string HttpAddress { get; init; } = "";

    /// <summary>", last seen in backward for 12 s at step 17" — its last reported phase, for messages about it; "" before any report.</summary>
    public string LastSeenDoing(DateTimeOffset now)
    {
        if (Activity is not { Phase.Length: > 0 } a || a.Phase == Distributed.ActivityPhases.Idle) return "";
        var seconds = (a.InPhase.TotalMilliseconds + Math.Max(0, (now - LastHeartbeat).TotalMilliseconds)) / 1000;
        return string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $", last seen in {WorkerActivity.Describe(a.Phase, a.Detail, a.WaitingOn)} for {seconds:F0} s{(a.Step > 0 ? $" at step {a.Step}" : "")}");
    }

    /// <summary>Whether a call with this token (and, with TLS, this client certificate) comes from this registration.</summary>
    public bool Holds(string token, string? certificate = null) =>
        System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(System.Text.Encoding.ASCII.GetBytes(token), System.Text.Encoding.ASCII.GetBytes(Token))
        && (Certificate.Length == 0 || string.Equals(certificate, Certificate, StringComparison.OrdinalIgnoreCase));

    public WorkerRecord Clone() => new(Id, Name, Address, Capabilities, Registered)
    {
        LastHeartbeat = LastHeartbeat, State = State, JobId = JobId, Token = Token, Key = Key, Certificate = Certificate, Cordoned = Cordoned, Leaving = Leaving, Message = Message, CordonedBy = CordonedBy,
        Activity = Activity, HttpAddress = HttpAddress,
    };
}
