namespace Dtrain.Server;

/// <summary>
/// Why the coordinator refused a request, whichever way it came: the gRPC services map it to a status code, the
/// dashboard and /metrics to an HTTP status (<see cref="Refusals"/>).
/// </summary>
public enum RefusalKind
{
    /// <summary>The caller's credential is missing or not valid (gRPC Unauthenticated, HTTP 401).</summary>
    Unauthenticated,

    /// <summary>The caller proved who it is (or offered a proof), and that is not enough for this request (PermissionDenied, 403).</summary>
    PermissionDenied,

    /// <summary>The request itself is malformed (InvalidArgument, 400).</summary>
    InvalidArgument,

    /// <summary>The request would go over a limit or quota (ResourceExhausted, 429).</summary>
    ResourceExhausted,

    /// <summary>The coordinator cannot take it now; the same request may succeed later (Unavailable, 503).</summary>
    Unavailable,

    /// <summary>The coordinator cannot decide, by no fault of the caller (Internal, 500).</summary>
    Internal,
}

/// <summary>A request the coordinator refused: its <see cref="RefusalKind"/> and a message for the caller (it names no server path).</summary>
public class RefusedException(RefusalKind kind, string message) : Exception(message)
{
    public RefusalKind Kind { get; } = kind;

    /// <summary>What a client may act on beyond the status code (the gRPC trailer <c>dtrain-refusal</c>, e.g. <see cref="Rpc.FileUpload.EmptyStream"/>); null when the code says it all.</summary>
    public string? Reason { get; init; }
}

/// <summary>A request refused by the token check (<see cref="Auth.TokenAuthenticator"/>): no valid token, or the tokens cannot be checked.</summary>
public sealed class AccessDeniedException(RefusalKind kind, string message) : RefusedException(kind, message);

/// <summary>A request that would take its caller over a limit: an upload's size, the pending uploads, an owner's storage quota.</summary>
public sealed class QuotaExceededException(string message) : RefusedException(RefusalKind.ResourceExhausted, message);
