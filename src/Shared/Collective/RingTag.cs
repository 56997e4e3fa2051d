namespace Dtrain.Collective;

/// <summary>
/// Identifies one piece of a message. For <see cref="PeerMessageKind.AllReduce"/>: one piece of one collective
/// operation, phase 0 = reduce-scatter, 1 = all-gather, at ring step <see cref="RingStep"/>. For
/// <see cref="PeerMessageKind.Tensor"/>: piece <see cref="Piece"/> of the tensor that the sender numbers
/// (<see cref="Operation"/>, <see cref="Phase"/>, <see cref="RingStep"/>); pipeline stages map their own tag onto them
/// (step, 0 activation / 1 gradient, micro-batch: <c>Distributed.Pipeline.StageTensorTag</c>), which is how logs and
/// frame errors spell such a tag.
/// </summary>
public readonly record struct RingTag(long Operation, int Phase, int RingStep, int Piece, PeerMessageKind Kind = PeerMessageKind.AllReduce)
{
    /// <inheritdoc />
    public override string ToString() => Kind == PeerMessageKind.Tensor
        ? $"{(Phase switch { 0 => "activation", 1 => "gradient", _ => $"phase {Phase}" })} of step {Operation} micro-batch {RingStep} piece {Piece}"
        : $"op {Operation} {RingAllReduce.PhaseName(Phase)} step {RingStep} piece {Piece}";
}
