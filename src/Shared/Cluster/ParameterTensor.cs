using System.Runtime.InteropServices;

namespace Dtrain.Cluster;

/// <summary>
/// One parameter of a model under its whole-model name, with the optimizer's state of it: what a pipeline stage hands
/// the coordinator for a gather, and what a resumed job's checkpoint gives each replica or stage. Nothing here is
/// checked: whoever loads it into a model checks the shape, the length and the values (ParameterTransfer.Load).
/// </summary>
/// <param name="Name">The parameter's whole-model name, e.g. "layers.1.weight_ih".</param>
/// <param name="Shape">Its shape.</param>
/// <param name="Values">Its values, float32 little-endian (as sent: the length is not checked here).</param>
/// <param name="OptimizerState">The optimizer's state of it (TorchSharp's per-parameter state format).</param>
public sealed record ParameterTensor(string Name, IReadOnlyList<long> Shape, ReadOnlyMemory<byte> Values, ReadOnlyMemory<byte> OptimizerState)
{
    /// <summary>The values as floats (a trailing partial float, if any, is left out).</summary>
    public ReadOnlySpan<float> Floats => MemoryMarshal.Cast<byte, float>(Values.Span);
}
