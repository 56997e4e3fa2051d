namespace Dtrain.Cluster;

/// <summary>
/// A worker as its peers reach it: its rank in a ring (or -1 for a pipeline neighbour), id, address, and — with TLS —
/// the SHA-256 of the certificate it must present ("" without TLS).
/// </summary>
public sealed record ClusterPeer(int Rank, string WorkerId, string Address, string CertificateSha256 = "");
