using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;
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
/// Vectorised: fp16 through <see cref="TensorPrimitives.ConvertToHalf"/> / <see cref="TensorPrimitives.ConvertToSingle(ReadOnlySpan{Half}, Span{float})"/>,
/// bf16 with <see cref="Vector{T}"/> integer arithmetic (the hardware's vector width) that gives the same bits as the
/// scalar reference (<see cref="ToBf16(float)"/>, <see cref="EncodeScalar"/>, <see cref="DecodeScalar"/>).
/// </summary>
public static class WireCodec
{
    /// <summary>Values converted per block when decoding fp16 with addition (a stack buffer of this many floats).</summary>
    private const int Block = 512;

    /// <summary>Bytes on the wire for <paramref name="count"/> values.</summary>
    public static int EncodedBytes(RingCompression compression, int count) =>
        compression == RingCompression.None ? count * sizeof(float) : (count + 1) / 2 * sizeof(float);

    /// <summary>A piece holding <paramref name="values"/> encoded into a pooled buffer (returned when the piece is disposed).</summary>
    internal static RingPiece Encode(RingCompression compression, RingTag tag, long offset, int pieces, ReadOnlySpan<float> values)
    {
        var length = EncodedBytes(compression, values.Length);
        var lease = new Lease(length);
        var words = MemoryMarshal.Cast<byte, ushort>(lease.Array.AsSpan(0, length));
        EncodeInto(compression, values, words);
        return RingPiece.FromBytes(tag, offset, pieces, lease.Array.AsMemory(0, length), lease);
    }

    /// <summary>Encodes <paramref name="values"/> into the first values.Length 16-bit words (a padding word after them is zeroed).</summary>
    public static void EncodeInto(RingCompression compression, ReadOnlySpan<float> values, Span<ushort> words)
    {
        if (compression == RingCompression.Fp16) TensorPrimitives.ConvertToHalf(values, MemoryMarshal.Cast<ushort, Half>(words)[..values.Length]);
        else ToBf16(values, words);
        if (words.Length > values.Length) words[values.Length..].Clear();
    }

    /// <summary>Decodes <paramref name="bytes"/> into <paramref name="destination"/>, adding (fp32) or overwriting.</summary>
    public static void Decode(RingCompression compression, ReadOnlySpan<byte> bytes, Span<float> destination, bool add)
    {
        var words = MemoryMarshal.Cast<byte, ushort>(bytes)[..destination.Length];
        if (compression == RingCompression.Fp16)
        {
            var halves = MemoryMarshal.Cast<ushort, Half>(words);
            if (!add)
            {
                TensorPrimitives.ConvertToSingle(halves, destination);
                return;
            }
            Span<float> block = stackalloc float[Block];
            for (var at = 0; at < destination.Length; at += Block)
            {
                var n = Math.Min(Block, destination.Length - at);
                var converted = block[..n];
                TensorPrimitives.ConvertToSingle(halves.Slice(at, n), converted);
                var target = destination.Slice(at, n);
                TensorPrimitives.Add(target, converted, target);
            }
        }
        else FromBf16(words, destination, add);
    }

    /// <summary>Rounds values in place to what they become after a trip through the encoding.</summary>
    public static void Round(RingCompression compression, Span<float> values)
    {
        if (compression == RingCompression.None) return;
        Span<ushort> block = stackalloc ushort[Block];
        for (var at = 0; at < values.Length; at += Block)
        {
            var n = Math.Min(Block, values.Length - at);
            var chunk = values.Slice(at, n);
            EncodeInto(compression, chunk, block[..n]);
            Decode(compression, MemoryMarshal.AsBytes(block[..n]), chunk, add: false);
        }
    }

    /// <summary>The scalar reference encoder (what the vector paths must match bit for bit): (Half) casts, <see cref="ToBf16(float)"/>.</summary>
    public static void EncodeScalar(RingCompression compression, ReadOnlySpan<float> values, Span<ushort> words)
    {
        if (compression == RingCompression.Fp16)
        {
            var halves = MemoryMarshal.Cast<ushort, Half>(words);
            for (var i = 0; i < values.Length; i++) halves[i] = (Half)values[i];
        }
        else
            for (var i = 0; i < values.Length; i++) words[i] = ToBf16(values[i]);
        if (words.Length > values.Length) words[values.Length..].Clear();
    }

    /// <summary>The scalar reference decoder, adding or overwriting.</summary>
    public static void DecodeScalar(RingCompression compression, ReadOnlySpan<ushort> words, Span<float> destination, bool add)
    {
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

    /// <summary>float32 -> bfloat16 for a span: two hardware vectors per iteration, the same bits as <see cref="ToBf16(float)"/>.</summary>
    private static void ToBf16(ReadOnlySpan<float> values, Span<ushort> words)
    {
        var bits = MemoryMarshal.Cast<float, uint>(values);
        var i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var n = Vector<uint>.Count;
            for (; i <= bits.Length - 2 * n; i += 2 * n)
                Vector.Narrow(Bf16Bits(new Vector<uint>(bits.Slice(i, n))), Bf16Bits(new Vector<uint>(bits.Slice(i + n, n)))).CopyTo(words[i..]);
        }
        for (; i < bits.Length; i++) words[i] = ToBf16(values[i]);
    }

    /// <summary>The bfloat16 bits (in the low half of each lane) of a vector of floats: round to nearest even, NaN made quiet.</summary>
    private static Vector<uint> Bf16Bits(Vector<uint> bits)
    {
        var nan = Vector.GreaterThan(bits & new Vector<uint>(0x7FFF_FFFFu), new Vector<uint>(0x7F80_0000u));
        var rounded = Vector.ShiftRightLogical(bits + new Vector<uint>(0x7FFFu) + (Vector.ShiftRightLogical(bits, 16) & Vector<uint>.One), 16);
        var quiet = Vector.ShiftRightLogical(bits, 16) | new Vector<uint>(0x0040u);
        return Vector.ConditionalSelect(nan, quiet, rounded);
    }

    /// <summary>bfloat16 -> float32 for a span (a shift into the high half), adding or overwriting.</summary>
    private static void FromBf16(ReadOnlySpan<ushort> words, Span<float> destination, bool add)
    {
        var i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var n = Vector<float>.Count;
            for (; i <= destination.Length - 2 * n; i += 2 * n)
            {
                Vector.Widen(new Vector<ushort>(words.Slice(i, 2 * n)), out var lower, out var upper);
                var a = Vector.AsVectorSingle(Vector.ShiftLeft(lower, 16));
                var b = Vector.AsVectorSingle(Vector.ShiftLeft(upper, 16));
                var at = destination.Slice(i, n);
                var bt = destination.Slice(i + n, n);
                if (add)
                {
                    // destination + decoded, in the scalar reference's operand order (the same NaN payloads too).
                    a = new Vector<float>(at) + a;
                    b = new Vector<float>(bt) + b;
                }
                a.CopyTo(at);
                b.CopyTo(bt);
            }
        }
        if (add) for (; i < destination.Length; i++) destination[i] += FromBf16(words[i]);
        else for (; i < destination.Length; i++) destination[i] = FromBf16(words[i]);
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
