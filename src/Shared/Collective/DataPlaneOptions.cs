namespace Dtrain.Collective;

/// <summary>Where the data plane listens and how big its shared-memory rings are.</summary>
public sealed record DataPlaneOptions
{
    /// <summary>Address of the TCP listener (the worker's listen address).</summary>
    public string Listen { get; init; } = "127.0.0.1";

    /// <summary>TCP port (0 = any free port; peers learn it through <c>Hello</c>).</summary>
    public int TcpPort { get; init; }

    /// <summary>Bytes of data per shared-memory ring (one per directed pair), at least two pieces' worth.</summary>
    public long SharedMemoryBytes { get; init; } = 8L * 1024 * 1024;

    /// <summary>Handshake, peer-silence and close waits of the links this data plane makes and accepts.</summary>
    public CollectiveTimeouts Timeouts { get; init; } = CollectiveTimeouts.Default;
}
