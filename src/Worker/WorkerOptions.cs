namespace Dtrain.Worker;

/// <summary>
/// Worker settings, bound from the "Worker" configuration section: appsettings.json, environment variables
/// (DTRAIN_Worker__Coordinator=...) and the command line (--Worker:Coordinator=... or the short flags of `dtrain worker`).
/// </summary>
public sealed record WorkerOptions
{
    /// <summary>Coordinator URL, e.g. http://127.0.0.1:5000.</summary>
    public string Coordinator { get; init; } = "http://127.0.0.1:5000";
    /// <summary>Port of this worker's gRPC server (0 = any free port).</summary>
    public int Port { get; init; }
    /// <summary>Interface to listen on.</summary>
    public string Listen { get; init; } = "127.0.0.1";
    /// <summary>Host name or IP other parties use to reach this worker (default: the listen address).</summary>
    public string? AdvertiseHost { get; init; }
    public string? Name { get; init; }
    /// <summary>Intra-op torch threads (0 = 1 when several workers may share the machine, which is the default assumption).</summary>
    public int Threads { get; init; }
    public string Device { get; init; } = "cpu";
    /// <summary>Largest gRPC message accepted, in bytes.</summary>
    public int MaxMessageBytes { get; init; } = 64 * 1024 * 1024;
    /// <summary>Give up a single collective operation after this long (a dead or hung peer).</summary>
    public double CollectiveTimeoutSeconds { get; init; } = 120;

    public IReadOnlyList<string> Validate()
    {
        var e = new List<string>();
        if (!Uri.TryCreate(Coordinator, UriKind.Absolute, out var u) || (u.Scheme != "http" && u.Scheme != "https"))
            e.Add($"Worker:Coordinator \"{Coordinator}\" must be an http(s) URL, e.g. http://127.0.0.1:5000");
        if (Port is < 0 or > 65535) e.Add($"Worker:Port {Port} must be in [0, 65535]");
        if (Threads is < 0 or > 1024) e.Add($"Worker:Threads {Threads} must be in [0, 1024]");
        if (MaxMessageBytes < 1024 * 1024) e.Add($"Worker:MaxMessageBytes {MaxMessageBytes} must be at least 1 MiB");
        if (!(CollectiveTimeoutSeconds > 0)) e.Add($"Worker:CollectiveTimeoutSeconds {CollectiveTimeoutSeconds} must be positive");
        return e;
    }
}
