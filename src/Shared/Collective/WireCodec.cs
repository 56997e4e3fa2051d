using System.Buffers;
using System.Runtime.InteropServices;

namespace Dtrain.Collective;

/// <summary>How all-reduce values travel between ranks: fp32 as they are, or 16-bit numbers (half the bytes).</summary>
public enum RingCompression
{
    /// <summary>float32, exact.</summary>
    None,
    /// <summary>IEEE half precision (10-bit mantissa, largest finite 65504): ~3 significant digits.</summary>
    Fp16,
    /// <summary>bfloat16 (the top 16 bits of a float32: 7-bit mantissa, float32's range): ~2 significant digits.</summary>
    Bf16,
}

/// <summary>
/// 16-bit encodings of ring pieces. The bytes are padded to whole 4-byte words (transports carry float32-sized words),
/// so a piece of n values is 4 * ceil(n / 2) bytes; the receiver knows n. Rounding is to nearest, ties to even, for both
/// formats; NaN and infinities stay NaN and infinities, so a non-finite gradient is still seen by every replica.
/// </summary>
public static class WireCodec
{
    /// <summary>Bytes on the wire for <paramref name="count"/> values.</summary>
    public static int EncodedBytes(RingCompression compression, int count) =>
        compression == RingCompression.None ? count * sizeof(float) : (count + 1) / 2 * sizeof(float);

    /// <summary>A piece holding <paramref name="values"/> encoded into a pooled buffer (returned when the piece is disposed).</summary>
    internal static RingPiece Encode(RingCompression compression, RingTag tag, long offset, int pieces, ReadOnlySpan<float> values)
    {
        var length = EncodedBytes(compression, values.Length);
        var lease = new Lease(length);
        var words = MemoryMarshal.Cast<byte, ushort>(lease.Array.AsSpan(0, length));
        if (compression == RingCompression.Fp16) ToHalf(values, words);
        else ToBf16(values, words);
        if (words.Length > values.Length) words[^1] = 0;
        return RingPiece.FromBytes(tag, offset, pieces, lease.Array.AsMemory(0, length), lease);
    }

    /// <summary>Decodes <paramref name="bytes"/> into <paramref name="destination"/>, adding (fp32) or overwriting.</summary>
    internal static void Decode(RingCompression compression, ReadOnlySpan<byte> bytes, Span<float> destination, bool add)
    {
        var words = MemoryMarshal.Cast<byte, ushort>(bytes)[..destination.Length];
        if (compression == RingCompression.Fp16)
        {
            var halves = MemoryMarshal.Cast<ushort, Half>(words);
            if (add) for (var i = 0; i < destination.Length; i++) destination[i] += (float)halves[i];
            else for (var i = 0; i < destination.Length; i++) destination[i] = (float)halves[i];
        }
        else
        {
            if (add) for (var i = 0; i < destination.Length; i++) destination[i] += FromBf16(words[i]);
            else for (var i = 0; i < destination.Length; i++) destination[i] = FromBf16(words[i]);
        }
    }

    /// <summary>Rounds values in place to what they become after a trip through the encoding.</summary>
    public static void Round(RingCompression compression, Span<float> values)
    {
        if (compression == RingCompression.Fp16)
            for (var i = 0; i < values.Length; i++) values[i] = (float)(Half)values[i];
        else if (compression == RingCompression.Bf16)
            for (var i = 0; i < values.Length; i++) values[i] = FromBf16(ToBf16(values[i]));
    }

    private static void ToHalf(ReadOnlySpan<float> values, Span<ushort> words)
    {
        var halves = MemoryMarshal.Cast<ushort, Half>(words);
        for (var i = 0; i < values.Length; i++) halves[i] = (Half)values[i];
    }

    private static void ToBf16(ReadOnlySpan<float> values, Span<ushort> words)
    {
        for (var i = 0; i < values.Length; i++) words[i] = ToBf16(values[i]);
    }

    /// <summary>float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.</summary>
    public static ushort ToBf16(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFF) > 0x7F80_0000) return (ushort)((bits >> 16) | 0x0040);
        return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
    }

    public static float FromBf16(ushort value) => BitConverter.UInt32BitsToSingle((uint)value << 16);

    private sealed class Lease(int length) : IDisposable
    {
        public byte[] Array { get; } = ArrayPool<byte>.Shared.Rent(length);

        public void Dispose() => ArrayPool<byte>.Shared.Return(Array);
    }
}
