using Dtrain.Distributed;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>The worker's single job slot.</summary>
public sealed class WorkerSlot(ILogger<WorkerSlot> log)
{
    public AssignedJob? Current { get; set; }
    public long Step { get; set; }
    /// <summary>What this worker does right now (phase, step, since when), sent with every heartbeat.</summary>
    public WorkerActivity Activity { get; } = new();

    /// <summary>Connects <paramref name="reducer"/>'s progress (all-reduce piece k of n, the peer waited on) to <see cref="Activity"/>; <paramref name="peerIds"/> in rank order.</summary>
    public void Observe(IGradientReducer reducer, IReadOnlyList<string> peerIds) => reducer.Progress = Activity.RingObserver(peerIds);

    public AssignedJob Require(string jobId)
    {
        var job = Current;
        if (job is null || job.JobId != jobId)
            throw new KeyNotFoundException($"job {jobId} is not assigned to this worker{(job is null ? "" : $" (it runs {job.JobId})")}");
        return job;
    }

    /// <summary>
    /// Leaves at a step boundary: waits up to <paramref name="timeout"/> for the step in progress to end, runs
    /// <paramref name="leave"/> (tell the coordinator) while no further step can start, then refuses further steps
    /// and releases the job. Without a job, only <paramref name="leave"/> runs.
    /// </summary>
    public async Task DrainAsync(TimeSpan timeout, Func<Task> leave, string reason)
    {
        var job = Current;
        if (job is null)
        {
            await leave().ConfigureAwait(false);
            return;
        }
        var standing = await job.Gate.WaitAsync(timeout).ConfigureAwait(false);
        if (standing) log.LogInformation("draining: job {JobId} stands after step {Step}", job.JobId, job.LastStep + 1);
        else log.LogWarning("draining: job {JobId} step {Step} did not end within {Timeout}s; leaving anyway", job.JobId, job.LastStep + 1, timeout.TotalSeconds);
        try
        {
            await leave().ConfigureAwait(false);
        }
        finally
        {
            job.Draining = true;
            if (standing) job.Gate.Release();
        }
        await ReleaseAsync(reason).ConfigureAwait(false);
    }

    public async Task ReleaseAsync(string reason)
    {
        var job = Current;
        if (job is null) return;
        Current = null;
        Step = 0;
        Activity.Job("");
        log.LogInformation("released job {JobId}: {Reason}", job.JobId, reason);
        await job.DisposeAsync().ConfigureAwait(false);
    }
}
