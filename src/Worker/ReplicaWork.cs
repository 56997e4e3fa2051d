using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Runtime;

namespace Dtrain.Worker;

/// <summary>This worker's whole-model replica of a data-parallel job: its model, optimizer and gradient reducer.</summary>
public sealed class ReplicaWork(DataParallelReplica replica) : IWorkerJob
{
    public DataParallelReplica Replica { get; } = replica;

    public double ParameterChecksum() => Replica.ParameterChecksum();

    public void LoadParameters(IReadOnlyDictionary<string, ParameterTensor> tensors)
    {
        var engine = Replica.Engine;
        ParameterTransfer.Load(engine.Model.named_parameters().Select(p => (p.name, p.parameter)), (TorchSharp.Modules.OptimizerHelper)engine.Optimizer, tensors);
    }

    public Task ReleaseAsync(TorchThread torch) => torch.RunAsync(Replica.Dispose);
}
