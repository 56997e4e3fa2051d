namespace Dtrain.Collective;

/// <summary>
/// Identifies one piece of a message. For <see cref="PeerMessageKind.AllReduce"/>: one piece of one collective
/// operation, phase 0 = reduce-scatter, 1 = all-gather. For <see cref="PeerMessageKind.StageTensor"/>: piece
/// <see cref="Piece"/> of the activation (phase 0) or activation gradient (phase 1) of training step
/// <see cref="Operation"/>, micro-batch <see cref="RingStep"/> (see <see cref="StageTag"/>).
/// </summary>
public readonly record struct RingTag(long Operation, int Phase, int RingStep, int Piece, PeerMessageKind Kind = PeerMessageKind.AllReduce)
{
    /// <summary>The tag of piece <paramref name="piece"/> of a stage tensor: phase 0 = activation, 1 = activation gradient.</summary>
    public static RingTag StageTag(long step, int phase, int microBatch, int piece) => new(step, phase, microBatch, piece, PeerMessageKind.StageTensor);

    /// <summary>"activation" or "gradient" for a stage tensor's phase.</summary>
    public static string StagePhaseName(int phase) => phase switch { 0 => "activation", 1 => "gradient", _ => $"phase {phase}" };

    /// <inheritdoc />
    public override string ToString() => Kind == PeerMessageKind.StageTensor
        ? $"{StagePhaseName(Phase)} of step {Operation} micro-batch {RingStep} piece {Piece}"
        : $"op {Operation} {RingAllReduce.PhaseName(Phase)} step {RingStep} piece {Piece}";
}
