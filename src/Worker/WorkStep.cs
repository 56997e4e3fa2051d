using Dtrain.Training;

namespace Dtrain.Worker;

/// <summary>
/// One training step as a worker's job runs it: the coordinator's command with this worker's <see cref="Rows"/> of it
/// (null: none this step), whether the carried hidden state is forgotten first (<see cref="ResetState"/>, an epoch's
/// first step) and carried at all (<see cref="CarryState"/>), and the fault drill's cause at this step
/// (<see cref="Inject"/>, <see cref="NonFiniteInjection"/>; null in normal operation).
/// </summary>
public sealed record WorkStep(long Step, BatchRows? Rows, bool ResetState, bool CarryState, long GlobalCount, double Lr, bool ReportChecksum, string? Inject = null);
