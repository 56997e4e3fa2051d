using Dtrain.Cluster;

namespace Dtrain.Server;

/// <summary>Builds the assignment of a rank: (rank, world, generation, first step, peers in rank order).</summary>
public delegate Assignment AssignmentBuilder(int rank, int world, long generation, long startStep, IReadOnlyList<ClusterPeer> peers);
