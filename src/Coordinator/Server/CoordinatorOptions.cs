namespace Dtrain.Server;

/// <summary>
/// Coordinator settings, bound from the "Coordinator" configuration section: appsettings.json, DTRAIN_-prefixed
/// environment variables (DTRAIN_Coordinator__Port=5000) and the command line (`dtrain serve --port ...`).
/// </summary>
public sealed record CoordinatorOptions
{
    public int Port { get; init; } = 5000;
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>Where jobs keep their uploaded data and checkpoints.</summary>
    public string DataDir { get; init; } = ".dtrain/coordinator";
    public int HeartbeatIntervalMs { get; init; } = 1000;
    /// <summary>A worker without a heartbeat for this long is lost; its job fails (named worker and step).</summary>
    public double WorkerTimeoutSeconds { get; init; } = 10;
    /// <summary>A worker that does not finish a step within this long fails its job (a hung worker).</summary>
    public double StepTimeoutSeconds { get; init; } = 300;
    /// <summary>Deadline of assignment, shard upload, evaluation and state transfer calls.</summary>
    public double CallTimeoutSeconds { get; init; } = 300;
    /// <summary>Compare replica parameter checksums every this many steps (and at the end).</summary>
    public int ChecksumInterval { get; init; } = 25;
    /// <summary>Largest gRPC message, in bytes; larger ones are refused with ResourceExhausted (data files travel in chunks).</summary>
    public int MaxMessageBytes { get; init; } = 64 * 1024 * 1024;
    /// <summary>Largest data file a client may upload, in bytes.</summary>
    public long MaxUploadBytes { get; init; } = 4L * 1024 * 1024 * 1024;
    /// <summary>Largest shard message sent to a worker, in int32 values (larger shards are chunked).</summary>
    public int ShardChunkValues { get; init; } = 1024 * 1024;

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
        if (HeartbeatIntervalMs is < 50 or > 60_000) e.Add($"Coordinator:HeartbeatIntervalMs {HeartbeatIntervalMs} must be in [50, 60000]");
        if (!(WorkerTimeoutSeconds * 1000 > 2 * HeartbeatIntervalMs)) e.Add($"Coordinator:WorkerTimeoutSeconds {WorkerTimeoutSeconds} must exceed two heartbeat intervals");
        if (!(StepTimeoutSeconds > 0)) e.Add($"Coordinator:StepTimeoutSeconds {StepTimeoutSeconds} must be positive");
        if (!(CallTimeoutSeconds > 0)) e.Add($"Coordinator:CallTimeoutSeconds {CallTimeoutSeconds} must be positive");
        if (ChecksumInterval < 1) e.Add($"Coordinator:ChecksumInterval {ChecksumInterval} must be >= 1");
        if (MaxMessageBytes < 1024 * 1024) e.Add($"Coordinator:MaxMessageBytes {MaxMessageBytes} must be at least 1 MiB");
        if (ShardChunkValues < 1024) e.Add($"Coordinator:ShardChunkValues {ShardChunkValues} must be at least 1024");
        return e;
    }
}
