using Dtrain.Protos.Jobs;
using Dtrain.Protos.Membership;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// Membership. Transitions: Register → Joining; first heartbeat → Idle; reserved for a job → Training; job ends →
/// Idle; Leave while training → Draining (removed when its job ends); Leave while idle → removed; no heartbeat for
/// WorkerTimeout → Lost (its job fails; a later heartbeat is answered "unknown" and the worker registers anew).
/// </summary>
public sealed class WorkerRegistry(CoordinatorOptions options, TimeProvider clock, ILogger<WorkerRegistry> log)
{
    private readonly Lock gate = new();
    private readonly Dictionary<string, WorkerRecord> workers = [];
    private int nextId;

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

    /// <summary>
    /// Adds a worker (Joining) under a new id. With TLS, <paramref name="certify"/> signs its certificate for that id
    /// and returns the certificate's SHA-256, which the record pins: heartbeats and leave must come with it.
    /// </summary>
    public WorkerRecord Register(RegisterRequest request, Func<string, string>? certify = null)
    {
        if (!Uri.TryCreate(request.Address, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
            throw new ArgumentException($"address \"{request.Address}\" must be an http(s) URL the coordinator and peers can reach");
        WorkerRecord record;
        lock (gate)
        {
            var id = $"w{++nextId}";
            record = new WorkerRecord(id, string.IsNullOrWhiteSpace(request.Name) ? id : request.Name, request.Address, request.Capabilities ?? new WorkerCapabilities(), clock.GetUtcNow())
            {
                Token = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16)),
                Certificate = certify?.Invoke(id) ?? "",
            };
            workers[id] = record;
        }
        log.LogInformation("worker {Id} registered from {Address} ({Cores} cores, {Device})", record.Id, record.Address, record.Capabilities.Cores, record.Capabilities.Device);
        WorkerRegistered?.Invoke(record.Clone());
        return record;
    }

    /// <summary>Records a heartbeat; false (register again) for an unknown or lost worker, or another registration's token or certificate.</summary>
    public bool Heartbeat(string id, string token, string? certificate = null)
    {
        bool becameIdle;
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || w.State == WorkerState.Lost || !w.Holds(token, certificate)) return false;
            w.LastHeartbeat = clock.GetUtcNow();
            becameIdle = w.State == WorkerState.Joining;
            if (becameIdle) w.State = WorkerState.Idle;
        }
        if (becameIdle) Changed?.Invoke();
        return true;
    }

    /// <summary>A worker leaves; ignored for an unknown id or another registration's token or certificate.</summary>
    public void Leave(string id, string token, string reason, string? certificate = null)
    {
        WorkerRecord? draining = null;
        WorkerRecord left;
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || !w.Holds(token, certificate)) return;
            if (w.State == WorkerState.Training)
            {
                w.State = WorkerState.Draining;
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

    public IReadOnlyList<WorkerRecord> Snapshot()
    {
        lock (gate) return [.. workers.Values.OrderBy(w => w.Registered).Select(w => w.Clone())];
    }

    public int IdleCount()
    {
        lock (gate) return workers.Values.Count(w => w.State == WorkerState.Idle);
    }

    /// <summary>Reserves <paramref name="count"/> idle workers (0 = all idle, at least one) for a job, oldest first; null when not enough are idle.</summary>
    public IReadOnlyList<WorkerRecord>? TryReserve(int count, string jobId)
    {
        lock (gate)
        {
            var idle = workers.Values.Where(w => w.State == WorkerState.Idle).OrderBy(w => w.Registered).ToList();
            var n = count == 0 ? idle.Count : count;
            if (n == 0 || idle.Count < n) return null;
            var chosen = idle.Take(n).ToList();
            foreach (var w in chosen) { w.State = WorkerState.Training; w.JobId = jobId; }
            return [.. chosen.Select(w => w.Clone())];
        }
    }

    /// <summary>Reserves up to <paramref name="max"/> idle workers (oldest first) for a running job that can grow; possibly none.</summary>
    public IReadOnlyList<WorkerRecord> TryReserveUpTo(int max, string jobId)
    {
        if (max <= 0) return [];
        lock (gate)
        {
            var chosen = workers.Values.Where(w => w.State == WorkerState.Idle).OrderBy(w => w.Registered).Take(max).ToList();
            foreach (var w in chosen) { w.State = WorkerState.Training; w.JobId = jobId; }
            return [.. chosen.Select(w => w.Clone())];
        }
    }

    /// <summary>A job continues without this worker: a draining one is removed, one still training returns to Idle, a lost one stays lost.</summary>
    public void Detach(string id, string jobId)
    {
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || w.JobId != jobId) return;
            w.JobId = "";
            if (w.State == WorkerState.Draining) workers.Remove(id);
            else if (w.State == WorkerState.Training) w.State = WorkerState.Idle;
        }
        Changed?.Invoke();
    }

    /// <summary>Returns a job's workers to Idle (draining ones are removed, lost ones stay lost).</summary>
    public void Release(string jobId)
    {
        lock (gate)
        {
            foreach (var w in workers.Values.Where(w => w.JobId == jobId).ToList())
            {
                w.JobId = "";
                if (w.State == WorkerState.Draining) workers.Remove(w.Id);
                else if (w.State == WorkerState.Training) w.State = WorkerState.Idle;
            }
        }
        Changed?.Invoke();
    }

    public WorkerState StateOf(string id)
    {
        lock (gate) return workers.TryGetValue(id, out var w) ? w.State : WorkerState.Lost;
    }

    /// <summary>Declares a worker lost now (it could not be reached), so it is not given the next job.</summary>
    public void MarkLost(string id, string reason)
    {
        lock (gate)
        {
            if (!workers.TryGetValue(id, out var w) || w.State == WorkerState.Lost) return;
            w.State = WorkerState.Lost;
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
                if (w.State == WorkerState.Lost) continue;
                if ((now - w.LastHeartbeat).TotalSeconds > options.WorkerTimeoutSeconds)
                {
                    w.State = WorkerState.Lost;
                    lost.Add(w.Clone());
                }
            }
            // Lost workers without a job are forgotten after a while; the listing keeps them visible meanwhile.
            foreach (var w in workers.Values.Where(w => w.State == WorkerState.Lost && w.JobId == "" && (now - w.LastHeartbeat).TotalSeconds > 10 * options.WorkerTimeoutSeconds).ToList())
                workers.Remove(w.Id);
        }
        foreach (var w in lost)
        {
            log.LogWarning("worker {Id} ({Address}) lost: no heartbeat for {Seconds:F1}s{Job}", w.Id, w.Address, (now - w.LastHeartbeat).TotalSeconds, w.JobId == "" ? "" : $" during job {w.JobId}");
            WorkerLost?.Invoke(w);
        }
    }
}

/// <summary>What the coordinator knows about one worker.</summary>
public sealed class WorkerRecord(string id, string name, string address, WorkerCapabilities capabilities, DateTimeOffset registered)
{
    public string Id { get; } = id;
    public string Name { get; } = name;
    public string Address { get; } = address;
    public WorkerCapabilities Capabilities { get; } = capabilities;
    public DateTimeOffset Registered { get; } = registered;
    public DateTimeOffset LastHeartbeat { get; set; } = registered;
    public WorkerState State { get; set; } = WorkerState.Joining;
    public string JobId { get; set; } = "";
    /// <summary>This registration's secret (<see cref="RegisterReply.Token"/>).</summary>
    public string Token { get; init; } = "";
    /// <summary>With TLS: SHA-256 (hex) of the certificate the coordinator issued to this registration; "" without TLS.</summary>
    public string Certificate { get; init; } = "";

    /// <summary>Whether a call with this token (and, with TLS, this client certificate) comes from this registration.</summary>
    public bool Holds(string token, string? certificate = null) =>
        System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(System.Text.Encoding.ASCII.GetBytes(token), System.Text.Encoding.ASCII.GetBytes(Token))
        && (Certificate.Length == 0 || string.Equals(certificate, Certificate, StringComparison.OrdinalIgnoreCase));

    public WorkerRecord Clone() => new(Id, Name, Address, Capabilities, Registered) { LastHeartbeat = LastHeartbeat, State = State, JobId = JobId, Token = Token, Certificate = Certificate };

    public WorkerInfo ToInfo() => new()
    {
        WorkerId = Id,
        Name = Name,
        Address = Address,
        State = State,
        JobId = JobId,
        Cores = Capabilities.Cores,
        Device = Capabilities.Device,
        MemoryBytes = Capabilities.MemoryBytes,
        Threads = Capabilities.Threads,
        LastHeartbeatUnixMs = LastHeartbeat.ToUnixTimeMilliseconds(),
        RegisteredUnixMs = Registered.ToUnixTimeMilliseconds(),
    };
}
