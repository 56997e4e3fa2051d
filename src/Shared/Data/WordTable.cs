using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Dtrain.Data;

/// <summary>
/// Word tokens (spans of text) to a number each — a count while fitting, an id while encoding — in an open-addressing
/// table whose keys' characters are kept in one array: a token is hashed once, a few characters at a time, and neither
/// looking it up nor counting it allocates. Ordinal: equal characters, equal token. Not thread-safe for writing.
/// </summary>
internal sealed class WordTable
{
    int[] slots = new int[1 << 10]; // entry + 1; 0: empty
    int[] hashes = new int[1 << 9];
    int[] starts = new int[1 << 9];
    int[] lengths = new int[1 << 9];
    long[] values = new long[1 << 9];
    char[] chars = new char[1 << 12];
    int charCount;

    public int Count { get; private set; }

    /// <summary>The number of <paramref name="token"/>, added as 0 when missing.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref long GetOrAdd(ReadOnlySpan<char> token)
    {
        var hash = Hash(token);
        var mask = slots.Length - 1;
        for (var at = hash & mask; ; at = (at + 1) & mask)
        {
            var e = slots[at] - 1;
            if (e < 0) return ref Add(token, hash, at);
            if (hashes[e] == hash && token.SequenceEqual(chars.AsSpan(starts[e], lengths[e]))) return ref values[e];
        }
    }

    /// <summary>The number of <paramref name="token"/>, or false when it is not in the table.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryGet(ReadOnlySpan<char> token, out long value)
    {
        var hash = Hash(token);
        var mask = slots.Length - 1;
        for (var at = hash & mask; ; at = (at + 1) & mask)
        {
            var e = slots[at] - 1;
            if (e < 0)
            {
                value = 0;
                return false;
            }
            if (hashes[e] == hash && token.SequenceEqual(chars.AsSpan(starts[e], lengths[e])))
            {
                value = values[e];
                return true;
            }
        }
    }

    ref long Add(ReadOnlySpan<char> token, int hash, int at)
    {
        var e = Count;
        if (e == values.Length)
        {
            Array.Resize(ref hashes, e * 2);
            Array.Resize(ref starts, e * 2);
            Array.Resize(ref lengths, e * 2);
            Array.Resize(ref values, e * 2);
        }
        if (charCount + token.Length > chars.Length)
        {
            var bigger = new char[Math.Max(chars.Length * 2, charCount + token.Length)];
            chars.AsSpan(0, charCount).CopyTo(bigger);
            chars = bigger;
        }
        token.CopyTo(chars.AsSpan(charCount));
        hashes[e] = hash;
        starts[e] = charCount;
        lengths[e] = token.Length;
        charCount += token.Length;
        Count = e + 1;
        if (Count * 2 > slots.Length) Grow();
        else slots[at] = e + 1;
        return ref values[e];
    }

    /// <summary>Twice the slots, every entry placed again (by its stored hash).</summary>
    void Grow()
    {
        slots = new int[slots.Length * 2];
        var mask = slots.Length - 1;
        for (var e = 0; e < Count; e++)
        {
            var at = hashes[e] & mask;
            while (slots[at] != 0) at = (at + 1) & mask;
            slots[at] = e + 1;
        }
    }

    /// <summary>Adds every entry of <paramref name="other"/> to this one's numbers.</summary>
    public void AddAll(WordTable other)
    {
        for (var e = 0; e < other.Count; e++) GetOrAdd(other.chars.AsSpan(other.starts[e], other.lengths[e])) += other.values[e];
    }

    /// <summary>The entries as strings, in the order they were added.</summary>
    public Dictionary<string, long> ToDictionary()
    {
        var d = new Dictionary<string, long>(Count, StringComparer.Ordinal);
        for (var e = 0; e < Count; e++) d.Add(new string(chars, starts[e], lengths[e]), values[e]);
        return d;
    }

    /// <summary>A 64-bit multiply-rotate hash of the characters, four at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int Hash(ReadOnlySpan<char> token)
    {
        const ulong K1 = 0x9E3779B97F4A7C15, K2 = 0xC2B2AE3D27D4EB4F;
        var h = (ulong)token.Length * K2;
        ref var b = ref Unsafe.As<char, byte>(ref MemoryMarshal.GetReference(token));
        var bytes = token.Length * 2;
        var i = 0;
        for (; i + 8 <= bytes; i += 8) h = BitOperations.RotateLeft(h ^ (Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref b, i)) * K1), 29) * K2;
        if (i < bytes)
        {
            ulong tail = 0;
            for (; i < bytes; i += 2) tail = (tail << 16) | Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref b, i));
            h = BitOperations.RotateLeft(h ^ (tail * K1), 29) * K2;
        }
        h ^= h >> 32;
        h *= K1;
        h ^= h >> 29;
        return (int)(h & 0x7FFF_FFFF);
    }
}
