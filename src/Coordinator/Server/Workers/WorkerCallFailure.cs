using Grpc.Core;

namespace Dtrain.Server;

/// <summary>
/// What a failed call to a worker means for its job: the one translation of a worker's <see cref="RpcException"/>
/// into the <see cref="JobFailure"/> the user sees (naming the worker, what it was doing and the step), or into
/// <see cref="OperationCanceledException"/> when the caller had cancelled.
/// </summary>
public static class WorkerCallFailure
{
    public static Exception From(RpcException e, WorkerRecord w, string what, long step, double timeoutSeconds, CancellationToken cancel)
    {
        if (e.StatusCode == StatusCode.DeadlineExceeded)
            return new JobFailure($"worker {w.Id} ({w.Address}) did not finish {what} at step {step} within {timeoutSeconds:F0}s (hung or overloaded)", w) { Detail = e.Status.Detail };
        if (e.StatusCode == StatusCode.Unavailable && !cancel.IsCancellationRequested)
            return new JobFailure($"worker {w.Id} ({w.Address}) unreachable during {what} at step {step}: {e.Status.Detail}", w) { Detail = e.Status.Detail };
        if (!cancel.IsCancellationRequested || e.StatusCode == StatusCode.Aborted)
        {
            // An unexpected error's text past its first line (a native stack trace, from a worker of an older version)
            // goes to the coordinator's log only (JobRunner), not into the job's state.
            var unexpected = e.StatusCode is StatusCode.Internal or StatusCode.Unknown;
            var detail = unexpected ? Rpc.ErrorText.FirstLine(e.Status.Detail) : e.Status.Detail;
            return new JobFailure($"worker {w.Id} ({w.Address}) failed {what} at step {step}: {e.StatusCode}: {detail}", peerFailure: e.StatusCode == StatusCode.Aborted)
            {
                FullText = unexpected && detail != e.Status.Detail ? e.Status.Detail : null,
                UnknownJob = e.StatusCode == StatusCode.NotFound,
                Detail = e.Status.Detail,
            };
        }
        return new OperationCanceledException($"{what} on worker {w.Id} cancelled: {e.Status.Detail}", e, cancel);
    }

    /// <summary>Runs a call to worker <paramref name="w"/>, translating its failure.</summary>
    public static async Task<T> GuardAsync<T>(WorkerRecord w, string what, long step, double timeoutSeconds, CancellationToken cancel, Func<Task<T>> call)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            throw From(e, w, what, step, timeoutSeconds, cancel);
        }
    }
}
