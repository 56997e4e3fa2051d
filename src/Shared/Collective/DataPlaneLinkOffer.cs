namespace Dtrain.Collective;

/// <summary>
/// A receiver's answer to <c>Hello</c>: its host identity, a one-time token for this sender, its TCP port, and a probe
/// file in its /dev/shm with the nonce written in it (null when it has no /dev/shm), by which the sender tells whether
/// the two share a host.
/// </summary>
public sealed record DataPlaneLinkOffer(string HostId, byte[] Token, int TcpPort, string? ProbePath, string? ProbeNonce);
