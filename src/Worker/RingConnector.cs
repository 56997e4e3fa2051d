using Dtrain.Distributed;
using Dtrain.Protos.Worker;

namespace Dtrain.Worker;

/// <summary>A connected ring for one job: the reducer the replica uses, and its teardown.</summary>
public sealed class RingConnection(IGradientReducer reducer, Func<ValueTask>? dispose = null) : IAsyncDisposable
{
    public IGradientReducer Reducer { get; } = reducer;
    public ValueTask DisposeAsync() => dispose?.Invoke() ?? ValueTask.CompletedTask;
}

/// <summary>Joins the ring of the peers named in an assignment.</summary>
public interface IRingConnector
{
    Task<RingConnection> ConnectAsync(AssignRequest request, CancellationToken cancel);
}
