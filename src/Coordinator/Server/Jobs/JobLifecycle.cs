using System.Collections.Frozen;

namespace Dtrain.Server;

/// <summary>Where a job stands (the domain's own type; the proto <c>JobState</c> is built from it).</summary>
public enum JobStatus
{
    Queued,
    Preparing,
    Running,
    /// <summary>An elastic job below its minimum of workers, waiting for more.</summary>
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

/// <summary>What happens to a job: each is one named transition of <see cref="JobLifecycle"/>.</summary>
public enum JobTrigger
{
    /// <summary>Its workers are reserved: its data is read and its workers assigned.</summary>
    Start,
    /// <summary>Its workers train it (again, after a wait or a re-assignment).</summary>
    Run,
    /// <summary>Below its minimum of workers: waits for more (the message says how many and how long).</summary>
    Wait,
    Succeed,
    Fail,
    Cancel,
    /// <summary>Back to the queue: it restarts from its newest checkpoint (training.max_restarts, or a coordinator restart).</summary>
    Requeue,
}

/// <summary>The one transition table of a job's state: <see cref="JobRecord.Transition"/> is the only way a job's state changes.</summary>
public static class JobLifecycle
{
    private static readonly JobStatus[] Unfinished = [JobStatus.Queued, JobStatus.Preparing, JobStatus.Running, JobStatus.Waiting];

    public static readonly FrozenDictionary<(JobStatus From, JobTrigger Trigger), JobStatus> Table = Build();

    private static FrozenDictionary<(JobStatus, JobTrigger), JobStatus> Build()
    {
        var t = new Dictionary<(JobStatus, JobTrigger), JobStatus>
        {
            [(JobStatus.Queued, JobTrigger.Start)] = JobStatus.Preparing,
            [(JobStatus.Preparing, JobTrigger.Run)] = JobStatus.Running,
            [(JobStatus.Running, JobTrigger.Run)] = JobStatus.Running,
            [(JobStatus.Waiting, JobTrigger.Run)] = JobStatus.Running,
            [(JobStatus.Preparing, JobTrigger.Wait)] = JobStatus.Waiting,
            [(JobStatus.Running, JobTrigger.Wait)] = JobStatus.Waiting,
            [(JobStatus.Waiting, JobTrigger.Wait)] = JobStatus.Waiting,
            [(JobStatus.Running, JobTrigger.Succeed)] = JobStatus.Succeeded,
            [(JobStatus.Preparing, JobTrigger.Requeue)] = JobStatus.Queued,
            [(JobStatus.Running, JobTrigger.Requeue)] = JobStatus.Queued,
            [(JobStatus.Waiting, JobTrigger.Requeue)] = JobStatus.Queued,
        };
        foreach (var from in Unfinished)
        {
            t[(from, JobTrigger.Fail)] = JobStatus.Failed;
            t[(from, JobTrigger.Cancel)] = JobStatus.Cancelled;
        }
        return t.ToFrozenDictionary();
    }

    public static bool IsFinished(JobStatus status) => status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Cancelled;

    public static bool Allows(JobStatus from, JobTrigger trigger) => Table.ContainsKey((from, trigger));

    /// <summary>The state after <paramref name="trigger"/>; <see cref="InvalidTransitionException"/> naming <paramref name="subject"/> when the table does not allow it.</summary>
    public static JobStatus Next(string subject, JobStatus from, JobTrigger trigger) =>
        Table.TryGetValue((from, trigger), out var to) ? to : throw new InvalidTransitionException(subject, from.ToString().ToLowerInvariant(), trigger.ToString().ToLowerInvariant());
}
