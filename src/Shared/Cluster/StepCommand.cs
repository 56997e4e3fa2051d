namespace Dtrain.Cluster;

/// <summary>
/// Run step <see cref="Step"/> (0-based) at learning rate <see cref="Lr"/>; <see cref="GlobalCount"/> is what the
/// loss of every replica together sums over. <see cref="Generation"/> 0 = not checked.
/// </summary>
public sealed record StepCommand(string JobId, long Step, double Lr, long GlobalCount, bool ReportChecksum = false, long Generation = 0);
