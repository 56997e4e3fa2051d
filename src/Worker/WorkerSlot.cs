using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>The worker's single job slot.</summary>
public sealed class WorkerSlot(ILogger<WorkerSlot> log)
{
    public ReplicaJob? Current { get; set; }
    public long Step { get; set; }

    public ReplicaJob Require(string jobId)
    {
        var job = Current;
        if (job is null || job.JobId != jobId)
            throw new RpcException(new Status(StatusCode.NotFound, $"job {jobId} is not assigned to this worker{(job is null ? "" : $" (it runs {job.JobId})")}"));
        return job;
    }

    public async Task ReleaseAsync(string reason)
    {
        var job = Current;
        if (job is null) return;
        Current = null;
        Step = 0;
        log.LogInformation("released job {JobId}: {Reason}", job.JobId, reason);
        await job.DisposeAsync().ConfigureAwait(false);
    }
}
