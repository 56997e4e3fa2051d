namespace Dtrain.Server;

/// <summary>Why a job stopped early: the message shown to the user, and the worker that could not be reached, if any.</summary>
public sealed class JobFailure(string message, WorkerRecord? unreachable = null, bool peerFailure = false) : Exception(message)
{
    public WorkerRecord? Unreachable { get; } = unreachable;
    /// <summary>The worker reported that a ring peer failed: a consequence, not the cause.</summary>
    public bool PeerFailure { get; } = peerFailure;
    /// <summary>No change of workers can help (too few of them for too long, none left): the job stops here.</summary>
    public bool Terminal { get; init; }
    /// <summary>A worker's whole error text when the message carries only its first line (for the coordinator's log, never the job's state).</summary>
    public string? FullText { get; init; }
    /// <summary>The worker answered but does not hold the job (a newcomer of a re-forming that failed half way: healthy and idle).</summary>
    public bool UnknownJob { get; init; }
    /// <summary>The worker's own words, without the worker and step the message adds.</summary>
    public string? Detail { get; init; }
}
