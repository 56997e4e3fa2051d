namespace Dtrain.Cluster;

/// <summary>Pipeline jobs: the second half of step <see cref="Step"/> — apply the optimizer with the whole model's gradient norm, or skip it.</summary>
public sealed record ApplyCommand(string JobId, long Step, double Lr, long GlobalCount, double GlobalNorm, bool ReportChecksum, bool Skip);
