namespace Dtrain.Collective;

/// <summary>What a message on a point-to-point link is (the frame says it, and a link accepts only its own kind).</summary>
public enum PeerMessageKind
{
    /// <summary>A piece of a ring all-reduce: operation, phase (0 reduce-scatter, 1 all-gather), ring step, piece.</summary>
    AllReduce = 0,

    /// <summary>
    /// A piece of a tensor that carries its shape: operation, phase (0 or 1), index, piece. Pipeline stages send their
    /// activations and gradients this way (step, activation|gradient, micro-batch: <c>Distributed.Pipeline.StageTensorTag</c>).
    /// </summary>
    Tensor = 1,
}
