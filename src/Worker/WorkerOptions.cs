namespace Dtrain.Worker;

/// <summary>
/// Worker settings, bound from the "Worker" configuration section: appsettings.json, environment variables
/// (DTRAIN_Worker__Coordinator=...) and the command line (--Worker:Coordinator=... or the short flags of `dtrain worker`).
/// </summary>
public sealed record WorkerOptions
{
    /// <summary>Coordinator URL, e.g. http://127.0.0.1:5000 (https://HOST:5000 with TLS).</summary>
    public string Coordinator { get; init; } = "http://127.0.0.1:5000";
    /// <summary>Port of this worker's gRPC server (0 = any free port).</summary>
    public int Port { get; init; }
    /// <summary>Interface to listen on.</summary>
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>Port of this worker's HTTP/1.1 listener (Prometheus /metrics), on the same interface: null or -1 = none, 0 = any free port.</summary>
    public int? HttpPort { get; init; }
    /// <summary>When set (at least 16 characters), GET /metrics needs "Authorization: Bearer TOKEN"; unset, it is open to whoever reaches the HTTP listener.</summary>
    public string? MetricsToken { get; init; }
    /// <summary>Host name or IP other parties use to reach this worker (default: the listen address; with a wildcard listen address, this machine's first non-loopback IPv4 address — a container's or pod's own IP).</summary>
    public string? AdvertiseHost { get; init; }
    /// <summary>
    /// The operator's name for this worker, shown next to its id by `dtrain workers` and usable in place of the id
    /// (`dtrain workers drain NAME`). Not of the form of an id (w followed by digits): ids are the coordinator's.
    /// </summary>
    public string? Name { get; init; }
    /// <summary>
    /// Intra-op torch threads: a number, or "auto" = the CPUs this process may use (its cgroup CPU quota and
    /// affinity, as a container or pod is given). Default 1: several workers may share a machine.
    /// </summary>
    public string Threads { get; init; } = "1";
    /// <summary>
    /// Memory this worker may use for a job, in MB: an assignment whose estimated weights, gradients, optimizer state and
    /// activations exceed it is refused (split the model into pipeline stages). Unset (the default): the memory
    /// available when the assignment comes (MemAvailable, the room under the cgroup's limit); 0 = no check.
    /// </summary>
    public double? MemoryBudgetMb { get; init; }
    /// <summary>On shutdown (SIGTERM), how long a training worker waits for its current step before it leaves anyway.</summary>
    public double DrainTimeoutSeconds { get; init; } = 60;
    public string Device { get; init; } = "cpu";
    /// <summary>Largest gRPC message accepted, in bytes.</summary>
    public int MaxMessageBytes { get; init; } = 64 * 1024 * 1024;
    /// <summary>Give up a single collective operation after this long (a dead or hung peer).</summary>
    public double CollectiveTimeoutSeconds { get; init; } = 120;
    /// <summary>How long joining a job's ring keeps retrying while the right-hand neighbour is not up or has not joined yet.</summary>
    public double RingConnectTimeoutSeconds { get; init; } = 30;
    /// <summary>
    /// How gradient bytes travel to the ring neighbour (and a pipeline stage's tensors to its neighbouring stages): auto (default) = shared memory when the neighbour is on this host
    /// (same kernel and the same /dev/shm, checked with a probe file), TCP otherwise; shm (same host only), tcp, or grpc
    /// (the gRPC streams, the fallback). Negotiated through the gRPC control plane; see docs/cluster.md.
    /// </summary>
    public string Transport { get; init; } = "auto";
    /// <summary>
    /// When every worker of a ring is on this host (each one's link is shared memory), fp32 all-reduces skip the ring:
    /// each worker maps the others' segments and a block is summed in two barriers (see docs/cluster.md). All workers of
    /// the ring must allow it; false = the ring over shared memory.
    /// </summary>
    public bool SharedMemoryGroup { get; init; } = true;
    /// <summary>Port of this worker's data-plane TCP listener (0 = any free port; peers learn it through gRPC).</summary>
    public int DataPort { get; init; }
    /// <summary>Deadline of this worker's calls to the coordinator: register, heartbeat, leave.</summary>
    public double CoordinatorCallTimeoutSeconds { get; init; } = 10;
    /// <summary>An inbound data-plane TCP connection must finish its TLS handshake and its claim within this many seconds, or it is dropped.</summary>
    public double DataHandshakeTimeoutSeconds { get; init; } = 15;
    /// <summary>A shared-memory peer (ring side or group rank) whose heartbeat has not moved for this many seconds is taken for dead.</summary>
    public double PeerSilentAfterSeconds { get; init; } = 10;
    /// <summary>Closing a ring link when a job ends: how many seconds it waits for the neighbour (gRPC stream acknowledgement, last TCP or shared-memory frame).</summary>
    public double LinkCloseGraceSeconds { get; init; } = 5;

    /// <summary>The data plane's waits from <see cref="DataHandshakeTimeoutSeconds"/>, <see cref="PeerSilentAfterSeconds"/> and <see cref="LinkCloseGraceSeconds"/> (call after <see cref="Validate"/>).</summary>
    public Collective.CollectiveTimeouts CollectiveTimeouts => Collective.CollectiveTimeouts.Default with
    {
        Handshake = TimeSpan.FromSeconds(DataHandshakeTimeoutSeconds),
        PeerSilentAfter = TimeSpan.FromSeconds(PeerSilentAfterSeconds),
        CloseGrace = TimeSpan.FromSeconds(LinkCloseGraceSeconds),
    };

    /// <summary>TLS: Dir (ca.crt, and the worker certificate tls.crt, tls.key), or Ca, Cert, Key; Insecure = plaintext beyond loopback. See <see cref="WorkerSecurity"/>.</summary>
    public Rpc.TlsSettings Tls { get; init; } = new();
    /// <summary>A join token (proof for Register instead of a worker certificate).</summary>
    public string? JoinToken { get; init; }
    /// <summary>A file whose first line (not blank, not a # comment) is the join token.</summary>
    public string? JoinTokenFile { get; init; }

    /// <summary>
    /// Fault drill, never set in normal operation: at these steps (1-based) of every job this worker makes its own loss
    /// ("loss:3,7") or one gradient element ("gradient:5") non-finite, to rehearse how a job skips such a step.
    /// </summary>
    public string? InjectNonFinite { get; init; }

    /// <summary>The parsed <see cref="InjectNonFinite"/> (call after <see cref="Validate"/>).</summary>
    public Training.NonFiniteInjection? NonFiniteInjection =>
        string.IsNullOrWhiteSpace(InjectNonFinite) ? null : Training.NonFiniteInjection.Parse(InjectNonFinite, "Worker:InjectNonFinite");

    public IReadOnlyList<string> Validate()
    {
        var e = new List<string>();
        if (MetricsToken is { } token && token.Trim().Length < 16) e.Add("Worker:MetricsToken must be at least 16 characters (or unset)");
        if (!Uri.TryCreate(Coordinator, UriKind.Absolute, out var u) || (u.Scheme != "http" && u.Scheme != "https"))
            e.Add($"Worker:Coordinator \"{Coordinator}\" must be an http(s) URL, e.g. http://127.0.0.1:5000");
        if (Port is < 0 or > 65535) e.Add($"Worker:Port {Port} must be in [0, 65535]");
        if (HttpPort is < -1 or > 65535) e.Add($"Worker:HttpPort {HttpPort} must be in [0, 65535], or -1 for none");
        if (DataPort is < 0 or > 65535) e.Add($"Worker:DataPort {DataPort} must be in [0, 65535]");
        if (!Collective.DataTransports.TryParse(Transport, out _)) e.Add($"Worker:Transport \"{Transport}\" must be auto, shm, tcp or grpc");
        if (!TryResolveThreads(Threads, out _)) e.Add($"Worker:Threads \"{Threads}\" must be \"auto\" or a number in [1, 1024]");
        if (MaxMessageBytes < 1024 * 1024) e.Add($"Worker:MaxMessageBytes {MaxMessageBytes} must be at least 1 MiB");
        if (!(CollectiveTimeoutSeconds > 0)) e.Add($"Worker:CollectiveTimeoutSeconds {CollectiveTimeoutSeconds} must be positive");
        if (!(RingConnectTimeoutSeconds > 0 && RingConnectTimeoutSeconds <= 86_400)) e.Add($"Worker:RingConnectTimeoutSeconds {RingConnectTimeoutSeconds} must be a number of seconds > 0 and at most 86400");
        if (!(CoordinatorCallTimeoutSeconds > 0 && CoordinatorCallTimeoutSeconds <= 86_400)) e.Add($"Worker:CoordinatorCallTimeoutSeconds {CoordinatorCallTimeoutSeconds} must be a number of seconds > 0 and at most 86400");
        if (!(DataHandshakeTimeoutSeconds > 0 && DataHandshakeTimeoutSeconds <= 86_400)) e.Add($"Worker:DataHandshakeTimeoutSeconds {DataHandshakeTimeoutSeconds} must be a number of seconds > 0 and at most 86400");
        if (!(PeerSilentAfterSeconds > 0 && PeerSilentAfterSeconds <= 86_400)) e.Add($"Worker:PeerSilentAfterSeconds {PeerSilentAfterSeconds} must be a number of seconds > 0 and at most 86400");
        if (!(LinkCloseGraceSeconds > 0 && LinkCloseGraceSeconds <= 86_400)) e.Add($"Worker:LinkCloseGraceSeconds {LinkCloseGraceSeconds} must be a number of seconds > 0 and at most 86400");
        if (!string.IsNullOrWhiteSpace(Name) && Dtrain.Distributed.WorkerNames.Problem(Name.Trim()) is { } name) e.Add($"Worker:Name (--name): {name}");
        if (!(DrainTimeoutSeconds >= 0)) e.Add($"Worker:DrainTimeoutSeconds {DrainTimeoutSeconds} must be >= 0");
        if (MemoryBudgetMb is { } budget && !(budget >= 0 && double.IsFinite(budget))) e.Add($"Worker:MemoryBudgetMb {budget} must be >= 0 (0 = no check; unset = the memory available)");
        try
        {
            _ = NonFiniteInjection;
        }
        catch (ArgumentException x)
        {
            e.Add(x.Message);
        }
        return e;
    }

    /// <summary>The parsed <see cref="Transport"/> (call after <see cref="Validate"/>).</summary>
    public Collective.DataTransport DataTransport => Collective.DataTransports.TryParse(Transport, out var t) ? t : throw new ArgumentException($"Worker:Transport \"{Transport}\" must be auto, shm, tcp or grpc");

    /// <summary>The torch thread count <see cref="Threads"/> stands for (call after <see cref="Validate"/>).</summary>
    public int ResolvedThreads => TryResolveThreads(Threads, out var n) ? n : throw new ArgumentException($"Worker:Threads \"{Threads}\" must be \"auto\" or a number in [1, 1024]");

    /// <summary>"auto" → <see cref="Environment.ProcessorCount"/>, which .NET derives from the cgroup CPU quota and the affinity mask; 0 (the old default) → 1.</summary>
    public static bool TryResolveThreads(string? value, out int threads)
    {
        threads = 0;
        var v = (value ?? "").Trim();
        if (v.Equals("auto", StringComparison.OrdinalIgnoreCase)) threads = Environment.ProcessorCount;
        else if (int.TryParse(v, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var n) && n <= 1024) threads = Math.Max(1, n);
        else return false;
        return true;
    }
}
