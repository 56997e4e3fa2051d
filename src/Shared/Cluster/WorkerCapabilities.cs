namespace Dtrain.Cluster;

/// <summary>
/// What a worker says it has when it registers: cores, device ("cpu", "cuda:0", ...), memory in bytes (0: not
/// measured), the intra-op torch threads it will use and its dtrain version. The coordinator plans memory by it.
/// </summary>
public sealed record WorkerCapabilities(int Cores, string Device, long MemoryBytes, int Threads, string Version)
{
    /// <summary>A worker that said nothing about itself (no cores, no device, memory not measured).</summary>
    public static readonly WorkerCapabilities Unknown = new(0, "", 0, 0, "");
}
