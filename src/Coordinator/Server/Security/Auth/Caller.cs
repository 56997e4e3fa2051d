using Grpc.Core;

namespace Dtrain.Server.Auth;

/// <summary>Who makes a Jobs call: a token's name and role, or <see cref="Open"/> when auth is off.</summary>
public sealed record Caller(string Name, Role Role, string TokenId)
{
    private const string Key = "dtrain.caller";

    /// <summary>Auth is off: every caller may do everything, and jobs have no owner.</summary>
    public static readonly Caller Open = new("", Role.Admin, "");

    public bool Authenticated => TokenId != "";

    /// <summary>Viewers and admins see every job; a submitter only the jobs submitted under its token name; a metrics token none.</summary>
    public bool CanSee(JobRecord job) => Role is Role.Viewer or Role.Admin || (Role == Role.Submitter && job.Owner == Name);

    public override string ToString() => Authenticated ? $"\"{Name}\" ({Role.Name()}, token {TokenId})" : "anonymous (auth off)";

    internal void AttachTo(ServerCallContext context) => context.UserState[Key] = this;

    /// <summary>The caller the auth interceptor admitted for this call.</summary>
    public static Caller Of(ServerCallContext context) =>
        context.UserState.TryGetValue(Key, out var v) && v is Caller c
            ? c
            : throw new RpcException(new Status(StatusCode.Internal, "no authenticated caller: the Jobs service must run behind the auth interceptor"));
}
