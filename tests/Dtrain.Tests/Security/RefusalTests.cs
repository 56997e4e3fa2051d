using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Tests.Support;
using Grpc.Core;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Security;

/// <summary>
/// The token check refuses with a domain exception (<see cref="AccessDeniedException"/>, its <see cref="RefusalKind"/>
/// and message), not with a gRPC status: the Jobs service's interceptor makes it an RpcException and the dashboard and
/// /metrics an HTTP status, each with the same code and message as before (AuthModeTests and MetricsAccessTests check
/// them over real sockets).
/// </summary>
public class RefusalTests
{
    static TokenAuthenticator Authenticator(string dataDir) =>
        new(new CoordinatorOptions { DataDir = dataDir, Auth = "on" }, new AuditLog(dataDir, NullLogger.Instance, TimeProvider.System), TimeProvider.System, NullLogger<TokenAuthenticator>.Instance);

    [Fact]
    public void A_missing_or_unknown_token_is_refused_as_unauthenticated_whichever_way_it_came()
    {
        using var tmp = new TempDir();
        using var auth = Authenticator(tmp.Path);
        var none = Assert.Throws<AccessDeniedException>(() => auth.Authenticate(null, "ipv4:127.0.0.1:1", "dashboard GET /"));
        Assert.Equal(RefusalKind.Unauthenticated, none.Kind);
        Assert.StartsWith("this coordinator requires a bearer token (header \"authorization: Bearer TOKEN\") and none was sent", none.Message);
        var rpc = none.ToRpc();
        Assert.Equal(StatusCode.Unauthenticated, rpc.StatusCode);
        Assert.Equal(none.Message, rpc.Status.Detail);
        Assert.Equal(StatusCodes.Status401Unauthorized, Refusals.HttpStatusOf(none.Kind));

        TokenStore.Create(tmp.Path, "alice", Role.Submitter, DateTimeOffset.UtcNow);
        var unknown = Assert.Throws<AccessDeniedException>(() => auth.Authenticate("Bearer dtr_not-a-token", "ipv4:127.0.0.1:1", "/dtrain.jobs.v1.Jobs/List", "metadata"));
        Assert.Equal(RefusalKind.Unauthenticated, unknown.Kind);
        Assert.Equal("the token is not valid on this coordinator (unknown token)", unknown.Message);
    }

    [Fact]
    public void A_broken_tokens_file_is_refused_as_the_coordinators_fault()
    {
        using var tmp = new TempDir();
        File.WriteAllText(TokenStore.PathIn(tmp.Path), "{ not json");
        using var auth = Authenticator(tmp.Path);
        var broken = Assert.Throws<AccessDeniedException>(() => auth.Authenticate("Bearer dtr_x", "ipv4:127.0.0.1:1", "metrics GET /metrics"));
        Assert.Equal(RefusalKind.Internal, broken.Kind);
        Assert.StartsWith("the coordinator cannot check tokens: ", broken.Message);
        Assert.Equal(StatusCode.Internal, broken.ToRpc().StatusCode);
        Assert.Equal(StatusCodes.Status500InternalServerError, Refusals.HttpStatusOf(broken.Kind));
    }

    [Fact]
    public void Quotas_are_resource_exhausted()
    {
        var e = new QuotaExceededException("upload \"a.txt\" of 9 bytes exceeds Coordinator:MaxUploadBytes = 8");
        Assert.Equal(RefusalKind.ResourceExhausted, e.Kind);
        Assert.Equal(StatusCode.ResourceExhausted, e.ToRpc().StatusCode);
        Assert.Equal(e.Message, e.ToRpc().Status.Detail);
        Assert.Equal(StatusCode.InvalidArgument, new RefusedException(RefusalKind.InvalidArgument, "x").ToRpc().StatusCode);
        Assert.Equal(StatusCode.Unavailable, new RefusedException(RefusalKind.Unavailable, "x").ToRpc().StatusCode);
    }
}
