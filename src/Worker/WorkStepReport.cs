using Dtrain.Cluster;

namespace Dtrain.Worker;

/// <summary>
/// What a step did: the reply to the coordinator, and for the worker's metrics the values it summed with its peers
/// (<see cref="SummedValues"/>; 0 when not counted) and the transport they went over.
/// </summary>
public sealed record WorkStepReport(StepResult Result, long SummedValues, string Transport);
