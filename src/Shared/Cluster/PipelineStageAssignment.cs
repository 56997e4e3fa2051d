namespace Dtrain.Cluster;

/// <summary>
/// The stage a pipeline worker holds: layers [<see cref="FirstLayer"/>, +<see cref="LayerCount"/>) of replica
/// <see cref="Replica"/>, and the previous and next stage of the same replica (null at the ends).
/// </summary>
public sealed record PipelineStageAssignment(
    int Stage, int Stages, int FirstLayer, int LayerCount, int Microbatches, string Schedule, int Replica, int Replicas,
    ClusterPeer? Previous, ClusterPeer? Next);
