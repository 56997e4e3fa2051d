using Dtrain.Specs;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Training;

/// <summary>
/// Builds SGD (with momentum), Adam or AdamW from the spec — dtrain's own steps (<see cref="Optimizers"/>: TorchSharp's
/// math and state, explicit Scalars) — and sets the rate of every parameter group.
/// </summary>
public static class OptimizerFactory
{
    public static optim.Optimizer Create(OptimizerSpec spec, IEnumerable<Parameter> parameters) => spec.Kind switch
    {
        OptimizerKinds.Sgd => new Optimizers.SGD(parameters, spec.Lr, momentum: spec.Momentum, weightDecay: spec.WeightDecay),
        OptimizerKinds.Adam => new Optimizers.Adam(parameters, spec.Lr, spec.Beta1, spec.Beta2, spec.Eps, spec.WeightDecay),
        OptimizerKinds.AdamW => new Optimizers.AdamW(parameters, spec.Lr, spec.Beta1, spec.Beta2, spec.Eps, spec.WeightDecay),
        _ => throw new ArgumentException($"unknown optimizer \"{spec.Kind}\"; allowed: {string.Join(", ", OptimizerKinds.All)}"),
    };

    public static void SetLearningRate(optim.Optimizer optimizer, double lr)
    {
        foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
    }
}
