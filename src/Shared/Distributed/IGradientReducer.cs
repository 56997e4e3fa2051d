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

    Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel);

    /// <summary>Name of the transport the sums travel over ("grpc", ...), for metrics and the worker's live activity; "" when none (a world of one).</summary>
    string Transport => "";

    /// <summary>Optional: told where each sum waits (piece k of n, from which peer), for live diagnosis; a reducer that cannot say ignores it.</summary>
    Collective.IRingProgress? Progress
    {
        get => null;
        set { }
    }
}

/// <summary>The reducer of a world of one: nothing to add.</summary>
public sealed class LocalReducer : IGradientReducer
{
    public static readonly LocalReducer Instance = new();
    public int WorldSize => 1;
    public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => Task.CompletedTask;
}
