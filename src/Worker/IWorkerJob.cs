using Dtrain.Cluster;
using Dtrain.Runtime;

namespace Dtrain.Worker;

/// <summary>
/// What a worker holds of its job: a whole data-parallel replica (<see cref="ReplicaWork"/>) or one pipeline stage
/// (<see cref="StageWork"/>). Its torch work runs on the job's torch thread.
/// </summary>
public interface IWorkerJob
{
    /// <summary>The sum of its parameters (the same on every replica of the model, or of the stage).</summary>
    double ParameterChecksum();

    /// <summary>Replaces its parameters and their optimizer state with <paramref name="tensors"/> (whole-model names).</summary>
    void LoadParameters(IReadOnlyDictionary<string, ParameterTensor> tensors);

    /// <summary>Frees what it holds (links, buffers), then its torch state on <paramref name="torch"/>.</summary>
    Task ReleaseAsync(TorchThread torch);
}
