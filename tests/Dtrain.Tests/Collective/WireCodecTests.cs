using System.Runtime.InteropServices;
using Dtrain.Collective;

namespace Dtrain.Tests.Collective;

/// <summary>
/// The vectorised 16-bit codecs give exactly the scalar reference's bits — encode, decode, decode-and-add and round —
/// on random values of every magnitude plus NaN (with payloads and signs), infinities, signed zeros, subnormals, the
/// largest finite values and exact ties, at lengths that exercise the vector loops and their scalar tails.
/// </summary>
public class WireCodecTests
{
    private static float[] Values(int n, int seed)
    {
        var random = new Random(seed);
        var values = new float[n];
        for (var i = 0; i < n; i++)
        {
            values[i] = random.Next(8) switch
            {
                0 => BitConverter.Int32BitsToSingle(random.Next()) * (random.Next(2) == 0 ? 1 : -1),   // any bit pattern: NaNs with payloads, subnormals, huge
                1 => (float)(random.NextDouble() * 2 - 1) * 1e-40f,                                       // float32 subnormals
                2 => (float)(random.NextDouble() * 2 - 1) * 6e-5f,                                        // around fp16's subnormal range
                3 => (float)(random.NextDouble() * 2 - 1) * 70000f,                                       // around fp16's largest finite
                // Exact ties for bf16 (the low 16 bits 0x8000) and for fp16 (13 dropped bits 0x1000).
                4 => BitConverter.UInt32BitsToSingle(((uint)random.Next() & 0xFFFF_0000u) | 0x8000u),
                5 => BitConverter.UInt32BitsToSingle(((uint)random.Next(0x3000_0000, 0x4700_0000) & 0xFFFF_E000u) | 0x1000u),
                _ => (float)(random.NextDouble() * 2 - 1) * MathF.Pow(10, random.Next(-8, 8)),
            };
        }
        float[] special = [float.NaN, -float.NaN, BitConverter.UInt32BitsToSingle(0x7F80_0001), BitConverter.UInt32BitsToSingle(0xFFC0_1234), float.PositiveInfinity,
            float.NegativeInfinity, 0f, -0f, float.Epsilon, -float.Epsilon, float.MaxValue, float.MinValue, 65504f, 65520f, -65520f, 5.96e-8f, 2.98e-8f, 1f, -1f];
        for (var i = 0; i < special.Length && i < n; i++) values[(i * 7919) % n] = special[i];
        return values;
    }

    private static uint[] Bits(float[] values) => MemoryMarshal.Cast<float, uint>(values).ToArray();

    [Theory]
    [InlineData(RingCompression.Fp16)]
    [InlineData(RingCompression.Bf16)]
    public void Vector_paths_match_the_scalar_reference_bit_for_bit(RingCompression compression)
    {
        foreach (var n in new[] { 1, 7, 15, 16, 17, 31, 33, 511, 512, 513, 4099, 100_003 })
        {
            var values = Values(n, seed: n);
            var words = new ushort[n + 1];
            var reference = new ushort[n + 1];
            words[n] = reference[n] = 0xFFFF;   // the padding word is cleared by both
            WireCodec.EncodeInto(compression, values, words);
            WireCodec.EncodeScalar(compression, values, reference);
            Assert.Equal(reference, words);

            var bytes = MemoryMarshal.AsBytes(words.AsSpan()).ToArray();
            var decoded = new float[n];
            var expected = new float[n];
            WireCodec.Decode(compression, bytes, decoded, add: false);
            WireCodec.DecodeScalar(compression, reference, expected, add: false);
            Assert.Equal(Bits(expected), Bits(decoded));

            var sum = Values(n, seed: n + 1);
            var expectedSum = (float[])sum.Clone();
            WireCodec.Decode(compression, bytes, sum, add: true);
            WireCodec.DecodeScalar(compression, reference, expectedSum, add: true);
            // NaN + NaN: IEEE 754 leaves open which operand's payload survives (and the JIT may swap a commutative add's
            // operands), so there only "NaN" must agree; every other sum is bit-identical.
            for (var i = 0; i < n; i++)
                if (!(float.IsNaN(expectedSum[i]) && float.IsNaN(sum[i])))
                    Assert.True(BitConverter.SingleToUInt32Bits(expectedSum[i]) == BitConverter.SingleToUInt32Bits(sum[i]), $"{compression} n={n} [{i}]: {sum[i]} vs {expectedSum[i]}");

            var rounded = (float[])values.Clone();
            WireCodec.Round(compression, rounded);
            Assert.Equal(Bits(expected), Bits(rounded));
        }
    }

    [Fact]
    public void Bf16_rounds_ties_to_even_and_keeps_nan_quiet()
    {
        var words = new ushort[16];
        float[] values = [.. Enumerable.Repeat(BitConverter.UInt32BitsToSingle(0x3F80_8000), 8), .. Enumerable.Repeat(BitConverter.UInt32BitsToSingle(0x3F81_8000), 7), BitConverter.UInt32BitsToSingle(0x7F80_0001)];
        WireCodec.EncodeInto(RingCompression.Bf16, values, words);
        Assert.All(words[..8], w => Assert.Equal(0x3F80, w));   // tie, even below
        Assert.All(words[8..15], w => Assert.Equal(0x3F82, w));  // tie, even above
        Assert.Equal(0x7FC0, words[15]);                          // signalling NaN made quiet, still NaN
    }
}
