using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// Everything a job's record holds besides its identity (<see cref="JobRecord.Id"/>, spec, owner, submission) and its
/// state (<see cref="JobRecord.Status"/>, changed only by <see cref="JobRecord.Transition"/>): its workers, progress,
/// newest checkpoint, membership generation and restarts. Immutable: <see cref="JobRecord.Update"/> replaces it whole,
/// under the record's lock. The job store keeps it as JSON (<see cref="JobStore"/>); <see cref="ProtoMapper.ToProto(JobRecord)"/>
/// builds the proto <c>JobInfo</c> from it at the service edge.
/// </summary>
public sealed record JobProgress
{
    /// <summary>What the job is doing or waiting for; why it failed or was cancelled.</summary>
    public string Message { get; init; } = "";
    /// <summary>The workers of its current generation, by rank.</summary>
    public IReadOnlyList<string> WorkerIds { get; init; } = [];
    public long Step { get; init; }
    public long TotalSteps { get; init; }
    public long Epoch { get; init; }
    public double Loss { get; init; }
    public double SamplesPerSecond { get; init; }
    public EvalMetrics? LastEval { get; init; }
    public DateTimeOffset? Started { get; init; }
    public DateTimeOffset? Finished { get; init; }
    /// <summary>The newest checkpoint's path on the coordinator ("" before the first).</summary>
    public string Checkpoint { get; init; } = "";
    /// <summary>The newest checkpoint: how long fetching and saving it took, and its size.</summary>
    public double CheckpointSeconds { get; init; }
    public long CheckpointBytes { get; init; }
    public long Parameters { get; init; }
    /// <summary>The job or checkpoint this job started from ("" from its seed), and the step it started at.</summary>
    public string ResumedFrom { get; init; } = "";
    public long StartStep { get; init; }
    /// <summary>Elastic bounds (0: the default).</summary>
    public int MinWorkers { get; init; }
    public int MaxWorkers { get; init; }
    /// <summary>Membership generation: 1, plus one per change of its workers (continued across restarts).</summary>
    public long Generation { get; init; }
    /// <summary>Automatic restarts from its checkpoint so far (training.max_restarts).</summary>
    public int Restarts { get; init; }

    /// <summary>Value equality, with the workers compared by content (a record compares lists by reference).</summary>
    public bool Equals(JobProgress? other) =>
        other is not null && Message == other.Message && WorkerIds.SequenceEqual(other.WorkerIds) && Step == other.Step && TotalSteps == other.TotalSteps
        && Epoch == other.Epoch && Loss.Equals(other.Loss) && SamplesPerSecond.Equals(other.SamplesPerSecond) && Equals(LastEval, other.LastEval)
        && Started == other.Started && Finished == other.Finished && Checkpoint == other.Checkpoint && CheckpointSeconds.Equals(other.CheckpointSeconds)
        && CheckpointBytes == other.CheckpointBytes && Parameters == other.Parameters && ResumedFrom == other.ResumedFrom && StartStep == other.StartStep
        && MinWorkers == other.MinWorkers && MaxWorkers == other.MaxWorkers && Generation == other.Generation && Restarts == other.Restarts;

    public override int GetHashCode() => HashCode.Combine(Step, Generation, Checkpoint, Message, WorkerIds.Count);
}

/// <summary>A job as the store keeps it: identity, state and progress (the spec is in the job's directory, spec.json).</summary>
public sealed record JobDocument(string Id, string Name, string Task, string Owner, int WorkersRequested, DateTimeOffset Submitted, JobStatus Status, JobProgress Progress);
