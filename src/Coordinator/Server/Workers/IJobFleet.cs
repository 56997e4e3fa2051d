namespace Dtrain.Server;

/// <summary>
/// The workers of a data-parallel job across membership generations. A fixed fleet (in-memory tests) never changes;
/// an elastic one (<see cref="JobFleet"/>) loses members that die, hang, are cut off or drain, admits idle workers
/// while below its maximum, and re-forms the job on the new membership at a step boundary.
/// </summary>
public interface IJobFleet
{
    /// <summary>The workers of the current generation, by rank.</summary>
    JobWorkers Workers { get; }
    long Generation { get; }
    /// <summary>Cancelled when a member of the current generation is lost or leaves.</summary>
    CancellationToken Departed { get; }
    /// <summary>Why the membership should change at the next step boundary — idle workers could join, or an admin drained a member — or null (checked at step boundaries).</summary>
    string? ChangeDue { get; }
    /// <summary>Whether a failure is one a new membership recovers from (a member lost, hung, unreachable or gone); removes the culprit.</summary>
    Task<bool> AbsorbsAsync(Exception failure, CancellationToken cancel);
    /// <summary>Stops the generation, drops departed members, admits joiners (waiting while below the minimum), and starts the next generation with every member at one committed step.</summary>
    Task<Reconfiguration> ReconfigureAsync(string reason, AssignmentBuilder assign, CancellationToken cancel);
    /// <summary>
    /// The job's first assignment (Assign, and LoadState when resumed) failed before any step: drops departed members,
    /// releases what the others half built, admits idle workers (waiting while below the minimum) and starts a new
    /// generation that the caller assigns from scratch.
    /// </summary>
    Task ReassignAsync(string reason, CancellationToken cancel);
}
