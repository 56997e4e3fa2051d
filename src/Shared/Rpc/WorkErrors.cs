namespace Dtrain.Rpc;

/// <summary>A peer (ring neighbour, neighbouring pipeline stage, state source) went away: a consequence of its failure, not this process's (gRPC Aborted).</summary>
public sealed class PeerFailureException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>The work was stopped on purpose — the job released, or its step abandoned for a new membership generation (gRPC Cancelled).</summary>
public sealed class WorkStoppedException(string message) : OperationCanceledException(message);

/// <summary>A request of an older membership generation, or from before a resize (gRPC FailedPrecondition, naming both generations).</summary>
public sealed class StaleGenerationException(string message) : InvalidOperationException(message);
