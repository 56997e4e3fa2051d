namespace Dtrain.Data;

/// <summary>
/// SplitMix64 (Steele, Lea and Flood 2014): a tiny PRNG whose output is fixed by its definition, unlike
/// <see cref="Random"/>, whose algorithm may change between .NET versions. Used wherever a seed must give
/// the same data on every machine and runtime (splits, synthetic tasks).
/// </summary>
public sealed class SplitMix64(ulong seed)
{
    ulong state = seed;

    public ulong NextUInt64()
    {
        var z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, bound) without modulo bias (rejection sampling).</summary>
    public int NextInt(int bound) => (int)NextLong(bound);

    /// <summary>Uniform in [0, bound) without modulo bias (rejection sampling).</summary>
    public long NextLong(long bound)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bound);
        var b = (ulong)bound;
        var limit = ulong.MaxValue - (ulong.MaxValue % b);
        ulong x;
        do x = NextUInt64(); while (x >= limit);
        return (long)(x % b);
    }

    /// <summary>
    /// A generator keyed by several values at once, e.g. (seed, epoch, step, row): the data a row gets depends only
    /// on its key, not on how many draws other rows or other workers made.
    /// </summary>
    public static SplitMix64 For(params long[] keys)
    {
        var acc = new SplitMix64(0x5EEDUL).NextUInt64();
        foreach (var k in keys) acc = new SplitMix64(acc ^ (ulong)k).NextUInt64();
        return new SplitMix64(acc);
    }

    /// <summary>Fisher-Yates shuffle in place.</summary>
    public void Shuffle<T>(IList<T> items)
    {
        for (var i = items.Count - 1; i > 0; i--)
        {
            var j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
