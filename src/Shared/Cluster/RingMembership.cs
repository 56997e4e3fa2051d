namespace Dtrain.Cluster;

/// <summary>A worker's place in the ring of a new membership generation of an elastic job, and the step that generation starts at.</summary>
public sealed record RingMembership(string JobId, long Generation, int Rank, int World, IReadOnlyList<ClusterPeer> Peers, long NextStep);
