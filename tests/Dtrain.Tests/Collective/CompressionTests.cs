using Dtrain.Collective;
using Xunit.Abstractions;

namespace Dtrain.Tests.Collective;

/// <summary>
/// 16-bit gradients on the ring: every rank ends with the same bits, and each reduced value is within W·u·Σ|x_r| of
/// the exact sum (u = 2^-11 for fp16, 2^-8 for bf16: one rounding per hop of the reduce-scatter plus the final one).
/// fp32 stays exact (RingAllReduceTests).
/// </summary>
public class CompressionTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(RingCompression.Fp16, 2)]
    [InlineData(RingCompression.Fp16, 4)]
    [InlineData(RingCompression.Bf16, 2)]
    [InlineData(RingCompression.Bf16, 4)]
    public async Task Compressed_sums_are_bit_identical_on_every_rank_and_within_the_rounding_bound(RingCompression compression, int world)
    {
        const int length = 100_003;   // odd: the last piece pads its 16-bit values to whole words
        var buffers = RingAllReduceTests.RandomBuffers(world, length, seed: 7);
        // Gradient-like magnitudes: a spread of scales, not just [-1, 1].
        var random = new Random(3);
        foreach (var b in buffers)
            for (var i = 0; i < length; i++) b[i] *= MathF.Pow(10, random.Next(-4, 2));
        var exact = RingAllReduceTests.SerialSumInDouble(buffers, length);
        var magnitude = new double[length];
        foreach (var b in buffers)
            for (var i = 0; i < length; i++) magnitude[i] += Math.Abs(b[i]);
        var transports = InMemoryRingTransport.CreateRing(world);
        await Task.WhenAll(transports.Select((t, rank) => new RingAllReduce(t, 4096, TimeSpan.FromSeconds(60)).SumAsync(buffers[rank], 1, compression)));
        for (var rank = 1; rank < world; rank++) RingAllReduceTests.AssertBitIdentical(buffers[0], buffers[rank]);

        var u = compression == RingCompression.Fp16 ? Math.Pow(2, -11) : Math.Pow(2, -8);
        double worst = 0, errorSquares = 0, exactSquares = 0;
        for (var i = 0; i < length; i++)
        {
            var error = Math.Abs(buffers[0][i] - exact[i]);
            // fp16 also flushes values below its subnormal range (6e-8) to zero.
            var allowed = world * u * magnitude[i] + (compression == RingCompression.Fp16 ? world * 6e-8 : 0);
            worst = Math.Max(worst, error / allowed);
            errorSquares += error * error;
            exactSquares += exact[i] * exact[i];
        }
        output.WriteLine($"{compression}, {world} ranks: relative error ||x - s|| / ||s|| = {Math.Sqrt(errorSquares / exactSquares):E2}; worst element at {worst:F2} of the bound");
        Assert.True(worst <= 1, $"an element is {worst:F2}x the bound W·u·Σ|x|");
        Assert.True(errorSquares > 0, "nothing was rounded: were the pieces really 16-bit?");
    }

    [Fact]
    public void Non_finite_values_survive_both_encodings()
    {
        foreach (var compression in new[] { RingCompression.Fp16, RingCompression.Bf16 })
        {
            float[] values = [float.NaN, float.PositiveInfinity, float.NegativeInfinity, 1e6f, 1.5f];
            WireCodec.Round(compression, values);
            Assert.True(float.IsNaN(values[0]));
            Assert.Equal(float.PositiveInfinity, values[1]);
            Assert.Equal(float.NegativeInfinity, values[2]);
            // fp16's largest finite value is 65504: larger gradients become infinite (and the step is skipped as non-finite).
            Assert.Equal(compression == RingCompression.Fp16 ? float.PositiveInfinity : 999424f, values[3]);
            Assert.Equal(1.5f, values[4]);
        }
    }
}
