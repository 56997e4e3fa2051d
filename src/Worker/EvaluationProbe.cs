namespace Dtrain.Worker;

/// <summary>
/// Tests' view into a worker's evaluation (registered in its services only by a test): <see cref="AfterBatch"/> runs
/// on the torch thread after each evaluated batch with the batches done and the call's cancellation — it may hold the
/// evaluation there (a slow or stuck evaluation at a chosen batch).
/// </summary>
public sealed class EvaluationProbe
{
    public Action<long, CancellationToken>? AfterBatch { get; init; }
}
