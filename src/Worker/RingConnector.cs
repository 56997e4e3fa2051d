using Dtrain.Cluster;
using Dtrain.Distributed;

namespace Dtrain.Worker;

/// <summary>A connected ring for one job: the reducer the replica uses, and its teardown.</summary>
public sealed class RingConnection(IGradientReducer reducer, Func<ValueTask>? dispose = null) : IAsyncDisposable
{
    public IGradientReducer Reducer { get; } = reducer;
    public ValueTask DisposeAsync() => dispose?.Invoke() ?? ValueTask.CompletedTask;
}

/// <summary>Joins the ring of a job's generation: this worker's rank among its peers.</summary>
public interface IRingConnector
{
    Task<RingConnection> ConnectAsync(RingMembership ring, CancellationToken cancel);
}
