using Dtrain.Collective;

namespace Dtrain.Distributed;

/// <summary>
/// The gradient reducer of a connected ring: sums through <see cref="RingAllReduce"/> (fp32 or compressed), names the
/// transport its bytes travel over (for metrics and the worker's live phase) and passes the progress observer on.
/// One class for every ring connector, so none of them forgets a member.
/// </summary>
public sealed class RingReducer(RingAllReduce ring, string transport) : IGradientReducer
{
    public int WorldSize => ring.WorldSize;

    public string Transport => transport;

    public IRingProgress? Progress
    {
        get => ring.Progress;
        set => ring.Progress = value;
    }

    public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => ring.SumAsync(buffer, operation, cancel);

    public Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancel) => ring.SumAsync(buffer, operation, compression, cancel);
}

/// <summary>
/// The gradient reducer of workers that all share one host: fp32 sums go through the shared-memory group
/// (<see cref="SharedMemoryAllReduce"/>, bit-identical to the ring's), compressed ones through the ring (16-bit values
/// save nothing in shared memory, but a job that asks for them gets the same rounding as on any transport).
/// <paramref name="registered"/> hears how each registration went (the buffer, or null when the group could not).
/// </summary>
public sealed class SharedMemoryGroupReducer(SharedMemoryAllReduce group, RingAllReduce ring, Action<int, RegisteredBuffer?>? registered = null) : IGradientReducer
{
    public int WorldSize => group.WorldSize;

    public string Transport => "shm";

    public IRingProgress? Progress
    {
        get => group.Progress;
        set
        {
            group.Progress = value;
            ring.Progress = value;
        }
    }

    /// <summary>Operation id of the registration (negative, apart from the replicas' sums and the group's setup, -1000 and -999).</summary>
    public const long RegisterOperation = -998;

    public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => group.SumAsync(buffer, operation, cancel);

    public Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancel) =>
        compression == RingCompression.None ? group.SumAsync(buffer, operation, cancel) : ring.SumAsync(buffer, operation, compression, cancel);

    /// <summary>A buffer registered with the group (<see cref="SharedMemoryAllReduce.RegisterBufferAsync"/>): the replicas' sums of it are zero-copy.</summary>
    public async Task<System.Buffers.IMemoryOwner<float>?> AllocateBufferAsync(int floats, CancellationToken cancel)
    {
        var buffer = await group.RegisterBufferAsync(floats, RegisterOperation, cancel).ConfigureAwait(false);
        registered?.Invoke(floats, buffer);
        return buffer;
    }
}
