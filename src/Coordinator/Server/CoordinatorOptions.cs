using Dtrain.Data;

namespace Dtrain.Server;

/// <summary>
/// Coordinator settings, bound from the "Coordinator" configuration section: appsettings.json, DTRAIN_-prefixed
/// environment variables (DTRAIN_Coordinator__Port=5000) and the command line (`dtrain serve --port ...`).
/// </summary>
public sealed record CoordinatorOptions
{
    public int Port { get; init; } = 5000;
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>
    /// Port of the HTTP/1.1 listener (same interface as gRPC) serving the dashboard and Prometheus /metrics: null or -1 =
    /// none, 0 = any free port. `dtrain serve` defaults it to <see cref="DefaultHttpPort"/>; the builder API leaves it off.
    /// </summary>
    public int? HttpPort { get; init; }

    /// <summary>The port `dtrain serve` gives the dashboard when none is configured (Ray's dashboard port).</summary>
    public const int DefaultHttpPort = 8265;
    /// <summary>Where jobs keep their uploaded data and checkpoints.</summary>
    public string DataDir { get; init; } = ".dtrain/coordinator";
    public int HeartbeatIntervalMs { get; init; } = 1000;
    /// <summary>
    /// A worker without a heartbeat for this long is lost: an elastic job goes on without it, a fixed one waits or fails
    /// (named worker and step). 7 heartbeat intervals by default: heartbeats come from their own task, not from the torch
    /// thread that runs steps, so a long step does not delay them (a hung or stopped process stops them).
    /// </summary>
    public double WorkerTimeoutSeconds { get; init; } = 7;
    /// <summary>
    /// A running job's worker that lags this long — silent (no heartbeat), or waited on by the others (in all-reduce or
    /// for a pipeline neighbour) — is named with its phase in a stall warning: `dtrain status`, a watch event and the
    /// coordinator's log. Well under <see cref="WorkerTimeoutSeconds"/> and <see cref="StepTimeoutSeconds"/>, so a hang is
    /// named long before the job gives up on the worker. A worker counts as silent only after two heartbeat intervals at least.
    /// </summary>
    public double StallWarningSeconds { get; init; } = 5;
    /// <summary>
    /// When set (at least 16 characters), GET /metrics and /metrics/targets on the HTTP listener need
    /// "Authorization: Bearer TOKEN" (Prometheus: authorization.credentials_file). Unset: they are open to whoever reaches the listener.
    /// </summary>
    public string? MetricsToken { get; init; }
    /// <summary>A worker that does not finish a step within this long fails its job (a hung worker).</summary>
    public double StepTimeoutSeconds { get; init; } = 300;
    /// <summary>How a data-parallel step's deadline follows the steps seen so far (<see cref="StepDeadlineOptions"/>).</summary>
    public StepDeadlineOptions StepDeadline { get; init; } = new();
    /// <summary>An elastic job below its minimum of workers waits this long for more (state "waiting") before it fails (or restarts from its checkpoint, training.max_restarts).</summary>
    public double WaitForWorkersSeconds { get; init; } = 60;
    /// <summary>While a job waits for workers (state waiting), how often its message's countdown is refreshed; a worker that becomes idle is taken at once, not at the next refresh.</summary>
    public int WaitingRefreshMs { get; init; } = 500;
    /// <summary>
    /// How many times a job's first assignment (Assign, and LoadState when resumed) is tried before any step: after a
    /// failed attempt the failing worker is dropped and the job assigned again (a new generation); when the last
    /// attempt fails too, the job fails naming the worker and its error.
    /// </summary>
    public int AssignAttempts { get; init; } = 5;
    /// <summary>Wait before the second assignment attempt, doubled before each later one (at most 16 times this).</summary>
    public double AssignBackoffSeconds { get; init; } = 0.5;
    /// <summary>Deadline of assignment, shard upload, evaluation and state transfer calls.</summary>
    public double CallTimeoutSeconds { get; init; } = 300;
    /// <summary>
    /// When a worker reports that a peer failed (its ring neighbour went away), how long the coordinator waits for its
    /// own calls to the other workers to fail too, so the job's message names the worker that died rather than the one
    /// that noticed it.
    /// </summary>
    public double FailureBlameGraceSeconds { get; init; } = 3;
    /// <summary>Deadline of telling a worker its job ended (Release); a worker that does not answer is logged, and returns to idle all the same.</summary>
    public double ReleaseTimeoutSeconds { get; init; } = 10;
    /// <summary>How long the coordinator tries to open a TCP connection to a worker before the call fails as unreachable.</summary>
    public double WorkerConnectTimeoutSeconds { get; init; } = 10;
    /// <summary>An idle connection to a worker is pinged after this long, and dropped when a ping is not answered within it (a worker behind a dead link is found without waiting for a call's deadline).</summary>
    public double KeepAlivePingSeconds { get; init; } = 10;
    /// <summary>Compare replica parameter checksums every this many steps (and at the end).</summary>
    public int ChecksumInterval { get; init; } = 25;
    /// <summary>Largest gRPC message, in bytes; larger ones are refused with ResourceExhausted (data files travel in chunks).</summary>
    public int MaxMessageBytes { get; init; } = 64 * 1024 * 1024;
    /// <summary>
    /// Largest data file a client may upload, in bytes; 0 (the default): <see cref="UploadLimit"/> decides. Without
    /// <see cref="SharedDataDir"/> at most <see cref="MaxDataFileBytes"/> (the job reads the file into memory); with it at
    /// most <see cref="MaxPendingUploadBytes"/> (the coordinator prepares it into a dataset, streaming).
    /// </summary>
    public long MaxUploadBytes { get; init; }

    /// <summary>
    /// A directory every worker sees at the same path (storage they share: a compose volume, NFS). When set, the data files
    /// uploaded or sent inline with a job are prepared by the coordinator, streaming, into a dataset
    /// in SharedDataDir/JOB (<see cref="PreparedUploads"/>), and the job trains from it as a data.dataset job: the workers
    /// read their rows themselves and the coordinator holds no text. Empty (the default): the job reads its files into memory,
    /// each at most <see cref="MaxDataFileBytes"/>, and sends the workers their rows.
    /// </summary>
    public string SharedDataDir { get; init; } = "";

    /// <summary>The largest upload accepted: <see cref="MaxUploadBytes"/>, or when that is 0 <see cref="MaxPendingUploadBytes"/> with a <see cref="SharedDataDir"/>, else <see cref="MaxDataFileBytes"/>.</summary>
    public long UploadLimit => MaxUploadBytes > 0 ? MaxUploadBytes : PreparesUploads ? MaxPendingUploadBytes : MaxDataFileBytes;

    /// <summary>Whether uploaded data is prepared into datasets under <see cref="SharedDataDir"/>.</summary>
    public bool PreparesUploads => !string.IsNullOrWhiteSpace(SharedDataDir);
    /// <summary>Largest shard message sent to a worker, in int32 values (larger shards are chunked).</summary>
    public int ShardChunkValues { get; init; } = 1024 * 1024;
    /// <summary>Bearer tokens on the Jobs API: auto (on when listening beyond loopback or once DATA_DIR/tokens.json has a token), on, off.</summary>
    public string Auth { get; init; } = "auto";
    /// <summary>The audit log records each token's first use and then again after this many minutes (0 = every call).</summary>
    public double AuditTokenUseMinutes { get; init; } = 10;

    /// <summary>
    /// Directories whose regular files a job may name as data without uploading them (absolute paths; symbolic links
    /// and <c>..</c> are resolved before the containment check; the file is then opened without following any link, and
    /// one with several hard links or that is the coordinator's own is refused: see <see cref="DataAccess"/>). Empty (the
    /// default): only uploaded files are read.
    /// </summary>
    public string[] DataRoots { get; init; } = [];
    /// <summary>Largest data file the coordinator reads into memory, uploaded or under a data root, in bytes (at most 1 GiB); not a limit on uploads it prepares into a dataset (<see cref="SharedDataDir"/>).</summary>
    public long MaxDataFileBytes { get; init; } = 1L << 30;
    /// <summary>Most workers one job may ask for (<c>submit --workers</c>); more is refused at submit.</summary>
    public int MaxWorkersPerJob { get; init; } = 64;
    /// <summary>The cluster's size: most workers registered at once (0 = no limit). Registrations beyond it are refused; a job asking for more can never run and is refused at submit.</summary>
    public int MaxWorkers { get; init; }
    /// <summary>Most uploads one client (<see cref="ICallerIdentity"/>: its token's user, else its certificate, else its address) may have pending (received, not yet used by a job, not expired), in progress included.</summary>
    public int MaxPendingUploads { get; init; } = 16;
    /// <summary>Most bytes one client may have in pending uploads (in progress counted at their announced size).</summary>
    public long MaxPendingUploadBytes { get; init; } = 4L << 30;
    /// <summary>An upload no job has used this long after it completed is deleted.</summary>
    public double UploadTtlMinutes { get; init; } = 60;
    /// <summary>
    /// A job's data files stored with it (uploaded or inline: DATA_DIR/jobs/JOB/data) are deleted this long after the job
    /// ended — succeeded, failed or cancelled (0 = as soon as it ends). Its checkpoints and record stay.
    /// </summary>
    public double JobDataRetentionMinutes { get; init; } = 1440;
    /// <summary>
    /// Most bytes one owner (a token's name; everyone when auth is off) may keep on the coordinator: its jobs' data files,
    /// checkpoints and records. A submission that would go over it is refused (ResourceExhausted, naming the quota and the
    /// usage); a running job's checkpoints may still take it over. 0 (the default) = no limit.
    /// </summary>
    public long MaxStoredBytesPerOwner { get; init; }
    /// <summary>Job submissions each client may make per minute on average (0 = no limit); beyond it, ResourceExhausted.</summary>
    public double SubmitsPerMinute { get; init; } = 60;
    /// <summary>Submissions a client may make in a burst before <see cref="SubmitsPerMinute"/> applies.</summary>
    public int SubmitBurst { get; init; } = 20;
    /// <summary>Worker registrations each client (its certificate, else its join token, else its address: <see cref="CallRateLimits"/>) may make per minute on average (0 = no limit).</summary>
    public double RegistrationsPerMinute { get; init; } = 60;
    /// <summary>Registrations a client may make in a burst (many workers starting at once with one bootstrap certificate or join token).</summary>
    public int RegistrationBurst { get; init; } = 64;

    /// <summary>TLS: Dir (ca.crt, tls.crt, tls.key, ca.key), or Ca, Cert, Key, CaKey; Insecure = plaintext beyond loopback. See <see cref="CoordinatorSecurity"/>.</summary>
    public Rpc.TlsSettings Tls { get; init; } = new();
    /// <summary>Tokens a worker may join with instead of a worker certificate (at least 16 characters each).</summary>
    public string[] JoinTokens { get; init; } = [];
    /// <summary>A file of join tokens, one per line (blank lines and lines starting with # are ignored).</summary>
    public string? JoinTokenFile { get; init; }

    public IReadOnlyList<string> Validate()
    {
        var e = new List<string>();
        if (Port is < 0 or > 65535) e.Add($"Coordinator:Port {Port} must be in [0, 65535]");
        if (HttpPort is < -1 or > 65535) e.Add($"Coordinator:HttpPort {HttpPort} must be in [0, 65535], or -1 for none");
        if (HttpPort is > 0 && HttpPort == Port) e.Add($"Coordinator:HttpPort {HttpPort} must differ from Coordinator:Port");
        if (HeartbeatIntervalMs is < 50 or > 60_000) e.Add($"Coordinator:HeartbeatIntervalMs {HeartbeatIntervalMs} must be in [50, 60000]");
        if (!(WorkerTimeoutSeconds * 1000 > 2 * HeartbeatIntervalMs)) e.Add($"Coordinator:WorkerTimeoutSeconds {WorkerTimeoutSeconds} must exceed two heartbeat intervals");
        if (!(StepTimeoutSeconds > 0)) e.Add($"Coordinator:StepTimeoutSeconds {StepTimeoutSeconds} must be positive");
        e.AddRange((StepDeadline ?? new()).Validate());
        Positive(e, "StallWarningSeconds", StallWarningSeconds);
        if (MetricsToken is { } token && token.Trim().Length < 16) e.Add("Coordinator:MetricsToken must be at least 16 characters (or unset)");
        if (!(WaitForWorkersSeconds >= 0)) e.Add($"Coordinator:WaitForWorkersSeconds {WaitForWorkersSeconds} must be >= 0");
        if (WaitingRefreshMs is < 10 or > 60_000) e.Add($"Coordinator:WaitingRefreshMs {WaitingRefreshMs} must be in [10, 60000]");
        if (AssignAttempts < 1) e.Add($"Coordinator:AssignAttempts {AssignAttempts} must be >= 1");
        Positive(e, "AssignBackoffSeconds", AssignBackoffSeconds, zeroAllowed: true);
        if (!(CallTimeoutSeconds > 0)) e.Add($"Coordinator:CallTimeoutSeconds {CallTimeoutSeconds} must be positive");
        Positive(e, "FailureBlameGraceSeconds", FailureBlameGraceSeconds, zeroAllowed: true);
        Positive(e, "ReleaseTimeoutSeconds", ReleaseTimeoutSeconds);
        Positive(e, "WorkerConnectTimeoutSeconds", WorkerConnectTimeoutSeconds);
        Positive(e, "KeepAlivePingSeconds", KeepAlivePingSeconds);
        if (ChecksumInterval < 1) e.Add($"Coordinator:ChecksumInterval {ChecksumInterval} must be >= 1");
        if (MaxMessageBytes < 1024 * 1024) e.Add($"Coordinator:MaxMessageBytes {MaxMessageBytes} must be at least 1 MiB");
        if (ShardChunkValues < 1024) e.Add($"Coordinator:ShardChunkValues {ShardChunkValues} must be at least 1024");
        if (!string.IsNullOrWhiteSpace(DataDir) && Path.Exists(DataDir) && !Directory.Exists(DataDir))
            e.Add($"Coordinator:DataDir: \"{DataDir}\" is an existing file, not a directory; the coordinator keeps job data and checkpoints in a directory");
        foreach (var root in DataRoots ?? [])
        {
            if (string.IsNullOrWhiteSpace(root) || !Path.IsPathRooted(root)) e.Add($"Coordinator:DataRoots: \"{root}\" must be an absolute path");
            else if (!Directory.Exists(root)) e.Add($"Coordinator:DataRoots: \"{root}\" is not an existing directory");
            else if (Overlaps(root, DataDir))
                e.Add($"Coordinator:DataRoots: \"{root}\" overlaps the data directory \"{DataDir}\": jobs could read other jobs' uploads and checkpoints; allow a directory apart from it");
            else if (PreparesUploads && Path.IsPathRooted(SharedDataDir) && Overlaps(root, SharedDataDir))
                e.Add($"Coordinator:DataRoots: \"{root}\" overlaps the shared data directory \"{SharedDataDir}\" (Coordinator:SharedDataDir): jobs could read the datasets other jobs' uploads were prepared into; allow a directory apart from it");
        }
        if (MaxDataFileBytes is < 1 or > DataFile.DefaultMaxBytes) e.Add($"Coordinator:MaxDataFileBytes {MaxDataFileBytes} must be in [1, {DataFile.DefaultMaxBytes}] (1 GiB: a file is decoded into one string)");
        if (PreparesUploads)
        {
            if (!Path.IsPathRooted(SharedDataDir)) e.Add($"Coordinator:SharedDataDir: \"{SharedDataDir}\" must be an absolute path (the workers see it at the same path)");
            else if (File.Exists(SharedDataDir)) e.Add($"Coordinator:SharedDataDir: \"{SharedDataDir}\" is an existing file, not a directory");
            else if (!string.IsNullOrWhiteSpace(DataDir) && Overlaps(SharedDataDir, DataDir))
                e.Add($"Coordinator:SharedDataDir: \"{SharedDataDir}\" overlaps the data directory \"{DataDir}\": the workers would see the coordinator's tokens, uploads and job store; share a directory apart from it");
            if (MaxUploadBytes < 0 || MaxUploadBytes > MaxPendingUploadBytes)
                e.Add($"Coordinator:MaxUploadBytes {MaxUploadBytes} must be in [0, MaxPendingUploadBytes = {MaxPendingUploadBytes}] (0 = MaxPendingUploadBytes)");
        }
        else if (MaxUploadBytes < 0 || MaxUploadBytes > MaxDataFileBytes)
            e.Add($"Coordinator:MaxUploadBytes {MaxUploadBytes} must be in [0, MaxDataFileBytes = {MaxDataFileBytes}] (0 = MaxDataFileBytes): a job reads its uploads into memory unless Coordinator:SharedDataDir is set");
        if (MaxWorkersPerJob is < 1 or > 4096) e.Add($"Coordinator:MaxWorkersPerJob {MaxWorkersPerJob} must be in [1, 4096]");
        if (MaxWorkers is < 0 or > 65536) e.Add($"Coordinator:MaxWorkers {MaxWorkers} must be in [0, 65536] (0 = no limit)");
        if (MaxPendingUploads < 1) e.Add($"Coordinator:MaxPendingUploads {MaxPendingUploads} must be >= 1");
        if (MaxPendingUploadBytes < UploadLimit) e.Add($"Coordinator:MaxPendingUploadBytes {MaxPendingUploadBytes} must be at least the largest upload, MaxUploadBytes = {UploadLimit}");
        if (!(UploadTtlMinutes > 0)) e.Add($"Coordinator:UploadTtlMinutes {UploadTtlMinutes} must be positive");
        if (MaxStoredBytesPerOwner < 0) e.Add($"Coordinator:MaxStoredBytesPerOwner {MaxStoredBytesPerOwner} must be >= 0 (0 = no limit)");
        if (!(JobDataRetentionMinutes >= 0) || !(JobDataRetentionMinutes <= 5_256_000)) e.Add($"Coordinator:JobDataRetentionMinutes {JobDataRetentionMinutes} must be a number of minutes >= 0 (0 = when the job ends) and at most 5256000 (10 years)");
        if (!(SubmitsPerMinute >= 0)) e.Add($"Coordinator:SubmitsPerMinute {SubmitsPerMinute} must be >= 0 (0 = no limit)");
        if (SubmitBurst < 1) e.Add($"Coordinator:SubmitBurst {SubmitBurst} must be >= 1");
        if (!(RegistrationsPerMinute >= 0)) e.Add($"Coordinator:RegistrationsPerMinute {RegistrationsPerMinute} must be >= 0 (0 = no limit)");
        if (RegistrationBurst < 1) e.Add($"Coordinator:RegistrationBurst {RegistrationBurst} must be >= 1");
        if (Auth is not ("auto" or "on" or "off")) e.Add($"Coordinator:Auth \"{Auth}\" must be auto, on or off");
        if (!(AuditTokenUseMinutes >= 0)) e.Add($"Coordinator:AuditTokenUseMinutes {AuditTokenUseMinutes} must be >= 0");
        return e;
    }

    /// <summary>A duration in seconds: a finite number above 0 (or 0 itself when <paramref name="zeroAllowed"/>), at most a day.</summary>
    private static void Positive(List<string> e, string key, double value, bool zeroAllowed = false)
    {
        if (!(zeroAllowed ? value >= 0 : value > 0) || !(value <= 86_400))
            e.Add($"Coordinator:{key} {value} must be a number of seconds {(zeroAllowed ? ">= 0" : "> 0")} and at most 86400");
    }

    /// <summary>Whether one directory is the other or inside it, symbolic links resolved where they exist.</summary>
    private static bool Overlaps(string a, string b)
    {
        static string Canonical(string p) => DataFile.RealPath(p) ?? Path.GetFullPath(p);
        var (x, y) = (Canonical(a), Canonical(b));
        return DataFile.IsUnder(x, y) || DataFile.IsUnder(y, x);
    }
}
