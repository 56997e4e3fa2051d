using Dtrain.Server;
using Dtrain.Worker;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A job's workers without gRPC: the real worker runtime (<see cref="WorkerRuntime"/>, what the gRPC service adapts)
/// of each rank reached through an in-process handle (<see cref="InProcessWorkerHandle"/>), its ring in memory. A step
/// driver runs on it exactly as on a cluster.
/// </summary>
public sealed class InMemoryJobWorkers : JobWorkers, IAsyncDisposable
{
    private readonly InMemoryWorkerPool pool;

    /// <param name="options">Each rank's worker options (default: the defaults), e.g. a fault drill on one rank.</param>
    public InMemoryJobWorkers(int world, Func<int, WorkerOptions>? options = null) : this(Build(world, options))
    {
    }

    private InMemoryJobWorkers((InMemoryWorkerPool Pool, IReadOnlyList<IWorkerHandle> Handles) built) : base(built.Handles, new CoordinatorOptions()) => pool = built.Pool;

    private static (InMemoryWorkerPool, IReadOnlyList<IWorkerHandle>) Build(int world, Func<int, WorkerOptions>? options)
    {
        var pool = new InMemoryWorkerPool(new CoordinatorOptions());
        var handles = new List<IWorkerHandle>();
        for (var r = 0; r < world; r++)
        {
            pool.Add($"mem{r}", options?.Invoke(r));
            handles.Add(pool.Connect(Record($"mem{r}")));
        }
        return (pool, handles);
    }

    /// <summary>A worker the coordinator knows by id, at its in-memory address.</summary>
    public static WorkerRecord Record(string id) =>
        new(id, "", InMemoryWorkerPool.AddressOf(id), Dtrain.Cluster.WorkerCapabilities.Unknown, DateTimeOffset.UtcNow);

    /// <summary>From now on worker <c>mem{rank}</c> answers nothing, as one whose process died (<see cref="InMemoryWorkerPool.StopAsync"/>).</summary>
    public Task StopAsync(int rank) => pool.StopAsync($"mem{rank}");

    public ValueTask DisposeAsync() => pool.DisposeAsync();
}
