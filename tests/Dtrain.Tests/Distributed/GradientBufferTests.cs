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
}
