namespace Dtrain.Distributed;

/// <summary>Sums a buffer element-wise across all replicas, in place (an all-reduce); operation ids keep concurrent calls apart.</summary>
public interface IGradientReducer
{
    Task SumAsync(float[] buffer, long operation, CancellationToken cancel);
}

/// <summary>The reducer of a world of one: nothing to add.</summary>
public sealed class LocalReducer : IGradientReducer
{
    public static readonly LocalReducer Instance = new();
    public Task SumAsync(float[] buffer, long operation, CancellationToken cancel) => Task.CompletedTask;
}
