using Grpc.Core;

namespace Dtrain.Server.Auth;

/// <summary>
/// A call's context with another cancellation token (the call's own, linked with another reason to end it); everything
/// else is the original's, its user state included, where <c>GetHttpContext()</c> finds the HTTP context of a context
/// that is not ASP.NET Core's own (under the key "__HttpContext", as grpc-dotnet documents for replaced contexts).
/// </summary>
internal sealed class LinkedCallContext : ServerCallContext
{
    private readonly ServerCallContext inner;
    private readonly CancellationToken cancellation;

    public LinkedCallContext(ServerCallContext inner, CancellationToken cancellation)
    {
        this.inner = inner;
        this.cancellation = cancellation;
        inner.UserState["__HttpContext"] = inner.GetHttpContext();
    }

    protected override string MethodCore => inner.Method;
    protected override string HostCore => inner.Host;
    protected override string PeerCore => inner.Peer;
    protected override DateTime DeadlineCore => inner.Deadline;
    protected override Metadata RequestHeadersCore => inner.RequestHeaders;
    protected override CancellationToken CancellationTokenCore => cancellation;
    protected override Metadata ResponseTrailersCore => inner.ResponseTrailers;
    protected override Status StatusCore { get => inner.Status; set => inner.Status = value; }
    protected override WriteOptions? WriteOptionsCore { get => inner.WriteOptions; set => inner.WriteOptions = value; }
    protected override AuthContext AuthContextCore => inner.AuthContext;
    protected override IDictionary<object, object> UserStateCore => inner.UserState;
    protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => inner.CreatePropagationToken(options);
    protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => inner.WriteResponseHeadersAsync(responseHeaders);
}
