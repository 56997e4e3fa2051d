namespace Dtrain.Cluster;

/// <summary>The member of generation <see cref="Generation"/> that stands at <see cref="NextStep"/>, whose state a joining or lagging worker takes.</summary>
public sealed record SyncSource(string JobId, long Generation, ClusterPeer Source, long NextStep);
