namespace Dtrain.Rpc;

/// <summary>
/// The version of the messages a coordinator and its workers exchange (protos/dtrain, the data plane's links). A worker
/// sends it when it registers (<c>WorkerCapabilities.protocol</c>); a coordinator refuses a worker of another version,
/// naming both, instead of letting it misread fields it does not know (a worker of an earlier build would ignore a
/// validation part's offset and evaluate the wrong rows). Raised whenever a change makes builds misunderstand each other.
/// </summary>
public static class WireProtocol
{
    /// <summary>1: the first numbered version (streaming Evaluate, per-rank validation parts, AEGIS-128X2 records).</summary>
    public const int Version = 1;
}
