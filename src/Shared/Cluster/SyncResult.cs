namespace Dtrain.Cluster;

/// <summary>What a worker took from its peer: the checksum of its parameters afterwards and the bytes transferred.</summary>
public sealed record SyncResult(double ParameterChecksum, long Bytes);
