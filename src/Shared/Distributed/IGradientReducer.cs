using Dtrain.Collective;

namespace Dtrain.Distributed;

/// <summary>
/// Sums a buffer element-wise across all replicas, in place (an all-reduce); operation ids keep concurrent calls apart.
/// The buffer may be any memory (a managed array, a slice of a bucket, pinned or native memory behind a
/// <see cref="System.Buffers.MemoryManager{T}"/>): reducers never copy it to a managed array of their own.
/// </summary>
public interface IGradientReducer
{
    /// <summary>Number of replicas taking part; 1 means there is nothing to add and callers may skip the copy out of the model.</summary>
    int WorldSize { get; }

    /// <summary>
    /// Starts the sum and returns its task without blocking the caller on I/O (replicas call it from inside backward,
    /// on the torch thread).
    /// </summary>
    Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel);

    /// <summary>
    /// A collective call (every replica, at the same point, with the same <paramref name="floats"/>): memory for the
    /// buffer this reducer will sum, when it has a faster kind than the caller's own (the shared-memory group's registered
    /// buffers: sums of their slices are zero-copy). Null when it has none; the caller then uses memory of its own. The
    /// caller disposes the result when it stops using it.
    /// </summary>
    Task<System.Buffers.IMemoryOwner<float>?> AllocateBufferAsync(int floats, CancellationToken cancel) => Task.FromResult<System.Buffers.IMemoryOwner<float>?>(null);

    /// <summary>Name of the transport the sums travel over ("grpc", ...), for metrics and the worker's live activity; "" when none (a world of one).</summary>
    string Transport => "";

    /// <summary>Optional: told where each sum waits (piece k of n, from which peer), for live diagnosis; a reducer that cannot say ignores it.</summary>
    Collective.IRingProgress? Progress
    {
        get => null;
        set { }
    }

    /// <summary>
    /// The sum with values travelling as <paramref name="compression"/> (<see cref="RingAllReduce.SumAsync(Memory{float}, long, RingCompression, CancellationToken)"/>);
    /// every replica passes the same. A reducer that cannot compress sends fp32 only.
    /// </summary>
    Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancel) =>
        compression == RingCompression.None || WorldSize == 1
            ? SumAsync(buffer, operation, cancel)
            : throw new NotSupportedException($"{GetType().Name} sends fp32 gradients only (gradient compression {compression} asked)");
}

/// <summary>The reducer of a world of one: nothing to add.</summary>
public sealed class LocalReducer : IGradientReducer
{
    public static readonly LocalReducer Instance = new();
    public int WorldSize => 1;
    public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => Task.CompletedTask;
}
