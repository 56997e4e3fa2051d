namespace Dtrain.Collective;

/// <summary>What a message on a point-to-point link is (the frame says it, and a link accepts only its own kind).</summary>
public enum PeerMessageKind
{
    /// <summary>A piece of a ring all-reduce: operation, phase (0 reduce-scatter, 1 all-gather), ring step, piece.</summary>
    AllReduce = 0,

    /// <summary>A piece of a pipeline stage tensor: step, phase (0 activation, 1 activation gradient), micro-batch, piece; carries the tensor's shape.</summary>
    StageTensor = 1,
}
