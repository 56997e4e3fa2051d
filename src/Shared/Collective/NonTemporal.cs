namespace Dtrain.Collective;

/// <summary>
/// Copies with non-temporal (streaming) stores: the destination lines are not read first (no read-for-ownership) and
/// do not displace the cache — for blocks another process reads next, or that this one reads only much later. The
/// stores are weakly ordered: <see cref="Fence"/> before anyone else may look.
/// </summary>
internal static unsafe class NonTemporal
{
    /// <summary>Below this many values a plain copy is as fast.</summary>
    private const int MinFloats = 1024;

    public static void Copy(ReadOnlySpan<float> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        var n = source.Length;
        if (!System.Runtime.Intrinsics.X86.Avx.IsSupported || n < MinFloats)
        {
            source.CopyTo(destination);
            return;
        }
        fixed (float* s = source)
        fixed (float* d = destination)
        {
            var i = 0;
            // Streaming stores need 32-byte aligned destinations: plain stores up to the first aligned address.
            while (i < n && ((nuint)(d + i) & 31) != 0)
            {
                d[i] = s[i];
                i++;
            }
            for (; i + 8 <= n; i += 8)
                System.Runtime.Intrinsics.X86.Avx.StoreAlignedNonTemporal(d + i, System.Runtime.Intrinsics.X86.Avx.LoadVector256(s + i));
            for (; i < n; i++) d[i] = s[i];
        }
    }

    /// <summary>Orders the streaming stores before any later store (SFENCE).</summary>
    public static void Fence()
    {
        if (System.Runtime.Intrinsics.X86.Sse.IsSupported) System.Runtime.Intrinsics.X86.Sse.StoreFence();
        else Thread.MemoryBarrier();
    }
}
