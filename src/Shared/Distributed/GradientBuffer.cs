using System.Buffers;
using System.Runtime.InteropServices;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Distributed;

/// <summary>
/// All gradients of a model flattened into one float buffer, in parameter order, and written back after a reduce.
/// One more slot at the end carries the replica's summed loss, so after the all-reduce every replica holds the whole
/// step's loss too: a non-finite loss anywhere makes every replica skip the step alike, with no extra round trip.
/// The values live in a managed array unless <see cref="Bind"/> gives them other memory (a reducer's registered buffer).
/// </summary>
public sealed class GradientBuffer(IReadOnlyList<Parameter> parameters) : IDisposable
{
    private readonly int gradientCount = checked((int)parameters.Sum(p => p.numel()));
    private IMemoryOwner<float>? owner;

    /// <summary>The gradients, then the loss slot: what is all-reduced.</summary>
    public Memory<float> Values { get; private set; } = new float[checked((int)parameters.Sum(p => p.numel()) + 1)];

    /// <summary>Moves the values to <paramref name="memory"/> (at least <see cref="Length"/> values; this buffer disposes it), or to a managed array when null; the values are not kept.</summary>
    public void Bind(IMemoryOwner<float>? memory)
    {
        if (memory is not null && memory.Memory.Length < Length)
            throw new ArgumentException($"{memory.Memory.Length} values given, {Length} needed", nameof(memory));
        var previous = owner;
        owner = memory;
        // Memory of its own is made only when leaving given memory: a managed array is kept as it is.
        if (memory is not null) Values = memory.Memory[..Length];
        else if (previous is not null) Values = new float[Length];
        previous?.Dispose();
    }

    /// <summary>Values in the buffer: the gradients and the loss slot.</summary>
    public int Length => gradientCount + 1;

    /// <summary>True when the values live in memory a reducer gave (<see cref="Bind"/>).</summary>
    public bool IsBound => owner is not null;

    public void Dispose()
    {
        owner?.Dispose();
        owner = null;
    }

    /// <summary>Gradient values (the buffer without its loss slot).</summary>
    public int GradientCount => gradientCount;

    /// <summary>The loss slot: this replica's summed loss before the reduce, every replica's after it.</summary>
    public float LossSum
    {
        get => Values.Span[gradientCount];
        set => Values.Span[gradientCount] = value;
    }

    private readonly int[] offsets = Offsets(parameters);

    private static int[] Offsets(IReadOnlyList<Parameter> parameters)
    {
        var offsets = new int[parameters.Count + 1];
        for (var i = 0; i < parameters.Count; i++) offsets[i + 1] = checked(offsets[i] + (int)parameters[i].numel());
        return offsets;
    }

    /// <summary>Where parameter <paramref name="index"/>'s gradient starts in <see cref="Values"/> (index = parameter count: the loss slot).</summary>
    public int OffsetOf(int index) => offsets[index];

    /// <summary>
    /// Copies every gradient in; a parameter without a gradient (no rows this step) contributes zeros. One copy per
    /// value, native to managed: in TorchSharp 0.107 <c>Tensor.bytes</c> of a contiguous CPU tensor is a span over the
    /// tensor's own memory and <c>contiguous()</c> of a contiguous tensor shares it, so no managed array is made per
    /// parameter per step (GradientBufferTests checks the allocation).
    /// </summary>
    public void Gather() => Gather(0, parameters.Count);

    /// <summary>Copies the gradients of parameters [<paramref name="first"/>, <paramref name="end"/>) in (zeros where there is none).</summary>
    public void Gather(int first, int end)
    {
        var offset = offsets[first];
        for (var i = first; i < end; i++)
        {
            var p = parameters[i];
            var n = (int)p.numel();
            var dest = Values.Span.Slice(offset, n);
            if (p.grad is { } g)
            {
                using var c = g.contiguous();
                MemoryMarshal.Cast<byte, float>(c.bytes).CopyTo(dest);
            }
            else dest.Clear();
            offset += n;
        }
    }

    /// <summary>Writes the (reduced) buffer back into the gradients, creating them where missing.</summary>
    public void Scatter()
    {
        var offset = 0;
        using var _ = no_grad();
        foreach (var p in parameters)
        {
            var n = (int)p.numel();
            if (p.grad is null) p.grad = zeros_like(p);
            p.grad.bytes = MemoryMarshal.AsBytes(Values.Span.Slice(offset, n));
            offset += n;
        }
    }
}
