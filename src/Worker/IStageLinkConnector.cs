using Dtrain.Cluster;
using Dtrain.Distributed.Pipeline;

namespace Dtrain.Worker;

/// <summary>
/// How a pipeline stage reaches its neighbour stages: over the worker's data transport (<see cref="StageLinkConnector"/>),
/// or in memory in tests.
/// </summary>
public interface IStageLinkConnector
{
    Task<IStageLinkSet> ConnectAsync(Assignment request, PipelineStageAssignment p, CancellationToken cancel);
}
