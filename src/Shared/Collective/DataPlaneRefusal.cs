namespace Dtrain.Collective;

/// <summary>How a data-plane negotiation (<c>Hello</c>, attaching a shared-memory ring) was refused or failed.</summary>
public enum DataPlaneRefusalKind
{
    /// <summary>No such channel is registered on the receiver (yet): the sender retries until its connect timeout.</summary>
    NotRegistered,

    /// <summary>The channel's generation is superseded by a newer one on the receiver.</summary>
    Superseded,

    /// <summary>The channel is closed on the receiver.</summary>
    Closed,

    /// <summary>The caller is not the channel's sender, or the link cannot be made.</summary>
    Refused,

    /// <summary>The caller is not who the receiver expects (its certificate), or it has no token.</summary>
    Forbidden,

    /// <summary>The receiver cannot be reached (yet): the sender retries until its connect timeout.</summary>
    Unreachable,

    /// <summary>The receiver did not answer before the deadline.</summary>
    NoAnswer,

    /// <summary>Anything else.</summary>
    Failed,
}

/// <summary>
/// A refused or failed data-plane negotiation, in the data plane's own terms; the gRPC adapter
/// (<see cref="GrpcDataPlane"/>) turns it into a status (and a <c>dtrain-refusal</c> trailer) and back.
/// </summary>
public sealed class DataPlaneRefusal(DataPlaneRefusalKind kind, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>What kind of refusal.</summary>
    public DataPlaneRefusalKind Kind { get; } = kind;

    /// <summary>Worth retrying until the connect deadline: the receiver is not up, or has not joined the channel yet.</summary>
    public bool Retryable => Kind is DataPlaneRefusalKind.NotRegistered or DataPlaneRefusalKind.Unreachable;
}
