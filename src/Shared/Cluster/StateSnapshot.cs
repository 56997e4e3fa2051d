namespace Dtrain.Cluster;

/// <summary>Capture a worker's training state after step <see cref="Step"/>, with the job's totals that the checkpoint keeps.</summary>
public sealed record StateSnapshot(string JobId, long Step, double ElapsedSeconds = 0, long SamplesSeen = 0, int NonFiniteStreak = 0);
