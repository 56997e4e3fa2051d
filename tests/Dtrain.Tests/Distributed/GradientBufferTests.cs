using Dtrain.Distributed;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Tests.Distributed;

/// <summary>The gradients of a model flattened for the all-reduce and written back: exact, and without a managed copy per parameter.</summary>
public class GradientBufferTests
{
    [Fact]
    public void Gather_and_Scatter_round_trip_exactly_and_Gather_allocates_no_array_per_parameter()
    {
        using var scope = NewDisposeScope();
        var weight = new Parameter(randn(512, 1024));
        var bias = new Parameter(randn(1024));
        var unused = new Parameter(randn(7));   // no gradient this step: contributes zeros
        (weight.sum() * 3 + (bias * bias).sum()).backward();
        var buffer = new GradientBuffer([weight, bias, unused]);

        buffer.Gather();
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 5; i++) buffer.Gather();
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        // 2 MiB of gradients per Gather: a managed copy of them would show as megabytes; a few tensor handles are not.
        Assert.True(allocated < 64 * 1024, $"5 Gathers of {buffer.GradientCount} values allocated {allocated} managed bytes");

        Assert.All(buffer.Values.Span.Slice(0, 512 * 1024).ToArray(), v => Assert.Equal(3f, v));
        var expectedBias = (bias.detach() * 2).data<float>().ToArray();
        Assert.Equal(expectedBias, buffer.Values.Span.Slice(512 * 1024, 1024).ToArray());
        Assert.All(buffer.Values.Span.Slice(512 * 1024 + 1024, 7).ToArray(), v => Assert.Equal(0f, v));

        for (var i = 0; i < buffer.GradientCount; i++) buffer.Values.Span[i] += 1;
        buffer.Scatter();
        Assert.Equal(4f, weight.grad!.min().item<float>());
        Assert.Equal(4f, weight.grad!.max().item<float>());
        Assert.Equal(1f, unused.grad!.max().item<float>());
    }

    private sealed class Owner(int length) : System.Buffers.IMemoryOwner<float>
    {
        public Memory<float> Memory { get; } = new float[length];
        public bool Disposed { get; private set; }
        public void Dispose() => Disposed = true;
    }

    [Fact]
    public void Bound_memory_carries_the_values_and_is_disposed_when_replaced_or_with_the_buffer()
    {
        using var scope = NewDisposeScope();
        var weight = new Parameter(randn(64, 32));
        (weight.sum() * 2).backward();
        using var buffer = new GradientBuffer([weight]);
        Assert.Throws<ArgumentException>(() => buffer.Bind(new Owner(buffer.Length - 1)));
        Assert.False(buffer.IsBound);

        var first = new Owner(buffer.Length + 5);
        buffer.Bind(first);
        Assert.True(buffer.IsBound);
        buffer.Gather();
        // The values are in the given memory (no copy of their own), the loss slot at its end.
        Assert.All(first.Memory.Span[..(64 * 32)].ToArray(), v => Assert.Equal(2f, v));
        buffer.LossSum = 7;
        Assert.Equal(7f, first.Memory.Span[64 * 32]);
        first.Memory.Span[..(64 * 32)].Fill(5);
        buffer.Scatter();
        Assert.Equal(5f, weight.grad!.min().item<float>());

        var second = new Owner(buffer.Length);
        buffer.Bind(second);
        Assert.True(first.Disposed);
        Assert.False(second.Disposed);
        buffer.Bind(null);
        Assert.True(second.Disposed);
        Assert.False(buffer.IsBound);
        Assert.Equal(buffer.Length, buffer.Values.Length);
    }
}
