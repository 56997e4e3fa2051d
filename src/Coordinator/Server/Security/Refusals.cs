using Grpc.Core;
using Microsoft.AspNetCore.Http;

namespace Dtrain.Server;

/// <summary>A <see cref="RefusedException"/> as each protocol says it: a gRPC status (the services and interceptors) or an HTTP status (the dashboard, /metrics).</summary>
public static class Refusals
{
    public static StatusCode StatusCodeOf(RefusalKind kind) => kind switch
    {
        RefusalKind.Unauthenticated => StatusCode.Unauthenticated,
        RefusalKind.PermissionDenied => StatusCode.PermissionDenied,
        RefusalKind.InvalidArgument => StatusCode.InvalidArgument,
        RefusalKind.ResourceExhausted => StatusCode.ResourceExhausted,
        RefusalKind.Unavailable => StatusCode.Unavailable,
        _ => StatusCode.Internal,
    };

    public static int HttpStatusOf(RefusalKind kind) => kind switch
    {
        RefusalKind.Unauthenticated => StatusCodes.Status401Unauthorized,
        RefusalKind.PermissionDenied => StatusCodes.Status403Forbidden,
        RefusalKind.InvalidArgument => StatusCodes.Status400BadRequest,
        RefusalKind.ResourceExhausted => StatusCodes.Status429TooManyRequests,
        RefusalKind.Unavailable => StatusCodes.Status503ServiceUnavailable,
        _ => StatusCodes.Status500InternalServerError,
    };

    /// <summary>The refusal as a gRPC call's error, with the same message (and its <see cref="RefusedException.Reason"/> as the <c>dtrain-refusal</c> trailer).</summary>
    public static RpcException ToRpc(this RefusedException e)
    {
        ArgumentNullException.ThrowIfNull(e);
        var status = new Status(StatusCodeOf(e.Kind), e.Message);
        return e.Reason is null ? new RpcException(status) : new RpcException(status, new Metadata { { Rpc.FileUpload.RefusalTrailer, e.Reason } });
    }
}
