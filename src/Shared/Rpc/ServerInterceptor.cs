using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Specs;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.Logging;

namespace Dtrain.Rpc;

/// <summary>
/// Every server call goes through here: timing and logging, and user-caused exceptions mapped to precise status
/// codes with the offending value in the message (bad spec/data → InvalidArgument, missing → NotFound), so no
/// handler leaks "Exception was thrown by handler" and no bad request takes the process down.
/// </summary>
/// <param name="clock">Where a call's duration is read (default: the system's).</param>
public sealed class ServerInterceptor(ILogger<ServerInterceptor> log, IEnumerable<IClientMessageFilter> filters, TimeProvider? clock = null) : Interceptor
{
    private readonly TimeProvider clock = clock ?? TimeProvider.System;

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        var started = this.clock.GetTimestamp();
        try
        {
            return await continuation(request, context).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not RpcException)
        {
            throw Map(e, context);
        }
        catch (RpcException e) when (Filtered(e) is { } filtered)
        {
            throw filtered;
        }
        finally
        {
            log.LogDebug("{Method} {Ms:F1} ms", context.Method, this.clock.GetElapsedTime(started).TotalMilliseconds);
        }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            return await continuation(requestStream, context).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not RpcException)
        {
            throw Map(e, context);
        }
        catch (RpcException e) when (Filtered(e) is { } filtered)
        {
            throw filtered;
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            await continuation(request, responseStream, context).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not RpcException)
        {
            throw Map(e, context);
        }
        catch (RpcException e) when (Filtered(e) is { } filtered)
        {
            throw filtered;
        }
    }

    /// <summary>A refusal a handler raised itself, with its message through the server's filters; null when they change nothing.</summary>
    private RpcException? Filtered(RpcException e)
    {
        var detail = filters.Aggregate(e.Status.Detail, (m, f) => f.Filter(m));
        return detail == e.Status.Detail ? null : new RpcException(new Status(e.StatusCode, detail, e.Status.DebugException), e.Trailers);
    }

    /// <summary>The status code a handler's exception becomes (<paramref name="callCancelled"/>: the caller had cancelled the call).</summary>
    public static StatusCode CodeOf(Exception e, bool callCancelled) => e switch
    {
        // A collective failure is a peer's fault (dead or hung neighbour): Aborted tells the coordinator so.
        Collective.CollectiveException or Collective.RingTransportException => StatusCode.Aborted,
        PeerFailureException => StatusCode.Aborted,
        WorkStoppedException => StatusCode.Cancelled,
        InsufficientMemoryException => StatusCode.ResourceExhausted,
        UnauthorizedAccessException => StatusCode.PermissionDenied,
        SpecException or DataFormatException or ArgumentException or InvalidDataException or FormatException => StatusCode.InvalidArgument,
        KeyNotFoundException or FileNotFoundException => StatusCode.NotFound,
        CorruptCheckpointException => StatusCode.DataLoss,
        OperationCanceledException when callCancelled => StatusCode.Cancelled,
        OperationCanceledException => StatusCode.Aborted,
        TimeoutException => StatusCode.DeadlineExceeded,
        InvalidOperationException => StatusCode.FailedPrecondition,
        _ => StatusCode.Internal,
    };

    private RpcException Map(Exception e, ServerCallContext context)
    {
        var code = CodeOf(e, context.CancellationToken.IsCancellationRequested);
        if (code == StatusCode.Internal)
        {
            // An unexpected error — a native one from libtorch among them — is logged whole (its native stack trace
            // names this machine's paths); the caller gets its first line, through the server's filters.
            log.LogError(e, "{Method} failed", context.Method);
            return new RpcException(new Status(code, filters.Aggregate(ErrorText.FirstLine(e.Message), (m, f) => f.Filter(m))));
        }
        log.LogInformation("{Method}: {Code}: {Message}", context.Method, code, e.Message);
        // The log keeps the message as it was; the caller gets it through the server's filters (no server paths).
        return new RpcException(new Status(code, filters.Aggregate(e.Message, (m, f) => f.Filter(m))));
    }
}

/// <summary>Rewrites the message of a refused call before a client sees it (e.g. hides server paths); a server registers any number.</summary>
public interface IClientMessageFilter
{
    string Filter(string message);
}
