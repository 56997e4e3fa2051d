using Dtrain.Collective;

namespace Dtrain.Distributed.Pipeline;

/// <summary>
/// Identifies piece <see cref="Piece"/> of the activation or activation gradient of training step <see cref="Step"/>,
/// micro-batch <see cref="MicroBatch"/>. On a data-plane link it travels as a <see cref="PeerMessageKind.Tensor"/>
/// message whose operation, phase and index fields carry the step, the phase and the micro-batch (<see cref="ToWire"/>).
/// </summary>
public readonly record struct StageTensorTag(long Step, StagePhase Phase, int MicroBatch, int Piece)
{
    /// <summary>The tag as the point-to-point links match and frame it.</summary>
    public RingTag ToWire() => new(Step, (int)Phase, MicroBatch, Piece, PeerMessageKind.Tensor);

    /// <summary>The stage tensor a <see cref="PeerMessageKind.Tensor"/> tag names.</summary>
    public static StageTensorTag FromWire(RingTag tag) => tag.Kind == PeerMessageKind.Tensor
        ? new(tag.Operation, (StagePhase)tag.Phase, tag.RingStep, tag.Piece)
        : throw new ArgumentException($"{tag} is not a tensor message", nameof(tag));

    /// <summary>"activation" or "gradient".</summary>
    public static string PhaseName(StagePhase phase) => phase switch
    {
        StagePhase.Activation => "activation",
        StagePhase.Gradient => "gradient",
        _ => $"phase {(int)phase}",
    };

    /// <inheritdoc />
    public override string ToString() => $"{PhaseName(Phase)} of step {Step} micro-batch {MicroBatch} piece {Piece}";
}
