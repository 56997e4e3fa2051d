namespace Dtrain.Training;

/// <summary>A tiny, fully specified PRNG (SplitMix64): data order must not depend on System.Random's unspecified algorithm.</summary>
public struct SplitMix64(ulong seed)
{
    private ulong state = seed;

    public ulong Next()
    {
        var z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, bound).</summary>
    public long NextBelow(long bound) => (long)(Next() % (ulong)bound);

    /// <summary>A stream seeded by several values at once, e.g. (seed, epoch, step, row).</summary>
    public static SplitMix64 For(params long[] keys)
    {
        var s = new SplitMix64(0x5EEDUL);
        var acc = s.Next();
        foreach (var k in keys)
        {
            s = new SplitMix64(acc ^ (ulong)k);
            acc = s.Next();
        }
        return new SplitMix64(acc);
    }
}
