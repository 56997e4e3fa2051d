using Dtrain.Rpc;
using Grpc.Core;

namespace Dtrain.Server.Auth;

/// <summary>
/// In front of every Jobs call: authenticates the bearer token (<see cref="TokenAuthenticator"/>) and checks the
/// role may call the method at all; per-job ownership is checked by <see cref="JobAccess"/> in the service. A
/// method missing from the table below is admin-only, so a new RPC is closed until someone decides otherwise.
/// </summary>
public sealed class AuthInterceptor(TokenAuthenticator authenticator, AuditLog audit) : AdmissionInterceptor
{
    static readonly Role[] Everyone = [Role.Viewer, Role.Submitter, Role.Admin];

    /// <summary>Method → the roles that may call it, and what it does (for the refusal message).</summary>
    static readonly Dictionary<string, (Role[] Roles, string Action)> Methods = new(StringComparer.Ordinal)
    {
        ["Upload"] = ([Role.Submitter, Role.Admin], "submit jobs (upload their data)"),
        ["Submit"] = ([Role.Submitter, Role.Admin], "submit jobs"),
        ["Cancel"] = ([Role.Submitter, Role.Admin], "cancel jobs"),
        ["Prepare"] = ([Role.Submitter, Role.Admin], "prepare datasets on the cluster"),
        ["Get"] = (Everyone, "read jobs"),
        ["List"] = (Everyone, "list jobs"),
        ["Watch"] = (Everyone, "watch jobs"),
        ["Download"] = (Everyone, "download checkpoints"),
        ["Ledger"] = (Everyone, "read jobs' sample ledgers"),
        ["History"] = (Everyone, "read jobs' step and evaluation history"),
        ["ListWorkers"] = ([Role.Viewer, Role.Admin], "list the workers"),
        ["CordonWorker"] = ([Role.Admin], "cordon workers"),
        ["DrainWorker"] = ([Role.Admin], "drain workers"),
        ["UncordonWorker"] = ([Role.Admin], "uncordon workers"),
    };

    protected override void Admit(ServerCallContext context)
    {
        Caller caller;
        try
        {
            caller = authenticator.Authenticate(context);
        }
        catch (AccessDeniedException e)
        {
            throw e.ToRpc();
        }
        var method = context.Method[(context.Method.LastIndexOf('/') + 1)..];
        var (roles, action) = Methods.TryGetValue(method, out var m) ? m : ([Role.Admin], $"call {method}");
        if (!roles.Contains(caller.Role))
        {
            audit.Write("auth.denied", caller, context.Peer, ("method", context.Method));
            var needs = string.Join(" or ", roles.Select(r => r.Name()));
            throw new RpcException(new Status(StatusCode.PermissionDenied, $"token {caller.TokenId} (\"{caller.Name}\") has role {caller.Role.Name()}, which may not {action}; that needs {needs}"));
        }
        caller.AttachTo(context);
    }

    /// <summary>
    /// A stream admitted with a token (watch, download, upload) ends once that token is revoked or removed: the handler's
    /// cancellation fires and the call ends with Unauthenticated saying why, as a new call with that token would.
    /// </summary>
    protected override async Task<T> Stream<T>(ServerCallContext context, Func<ServerCallContext, Task<T>> call)
    {
        var caller = Caller.Of(context);
        if (!caller.Authenticated) return await call(context).ConfigureAwait(false);
        using var held = authenticator.Hold(caller, context.Method, context.Peer);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, held.Ended);
        try
        {
            return await call(new LinkedCallContext(context, linked.Token)).ConfigureAwait(false);
        }
        catch (Exception e) when (held.Reason is { } reason && !context.CancellationToken.IsCancellationRequested
                                  && e is OperationCanceledException or IOException or RpcException { StatusCode: StatusCode.Cancelled })
        {
            throw new RpcException(new Status(StatusCode.Unauthenticated, $"{reason}: this {Verb(context.Method)} ended"));
        }
    }

    static string Verb(string method) => method[(method.LastIndexOf('/') + 1)..] switch
    {
        "Watch" => "watch",
        "Download" => "download",
        "Upload" => "upload",
        var m => $"{m} stream",
    };

}
