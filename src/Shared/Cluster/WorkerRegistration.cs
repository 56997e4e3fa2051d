namespace Dtrain.Cluster;

/// <summary>
/// A worker asking to join: the address the coordinator and its peers reach it at (an http(s) URL), the operator's
/// name for it ("" for none), what it has, and who it is.
/// </summary>
/// <param name="Address">Its gRPC server, e.g. "http://127.0.0.1:5101".</param>
/// <param name="Name">The operator's name for it ("" when none was given); checked by the registry.</param>
/// <param name="Capabilities">Cores, device, memory, threads, version.</param>
public sealed record WorkerRegistration(string Address, string Name, WorkerCapabilities Capabilities)
{
    /// <summary>With TLS: SHA-256 (hex) of the worker's own public key (its signing request's), which owns its name and address; "" without TLS.</summary>
    public string Key { get; init; } = "";
    /// <summary>It was cordoned by the coordinator it registered with before (it keeps that across a coordinator restart).</summary>
    public bool Cordoned { get; init; }
    /// <summary>Its HTTP listener for Prometheus, as it advertises it; "" when it has none (the registry keeps only an http(s) URL).</summary>
    public string HttpAddress { get; init; } = "";
}
