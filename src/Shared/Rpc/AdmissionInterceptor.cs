using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Dtrain.Rpc;

/// <summary>
/// An interceptor that decides, before any handler runs, whether a call may go ahead: <see cref="Admit"/> throws an
/// <see cref="RpcException"/> to refuse it. The same check for all four kinds of call (unary and streaming); the
/// certificate check (<see cref="AccessInterceptor"/>) and the coordinator's token check are the two admissions.
/// </summary>
public abstract class AdmissionInterceptor : Interceptor
{
    /// <summary>Lets the call go ahead, or throws the refusal.</summary>
    protected abstract void Admit(ServerCallContext context);

    /// <summary>
    /// Runs an admitted streaming call (client, server or both ways), which may last long after it was admitted; an
    /// override may pass the handler another context (e.g. one whose cancellation also ends the call once the caller's
    /// credential is withdrawn). Unary calls run as admitted.
    /// </summary>
    protected virtual Task<T> Stream<T>(ServerCallContext context, Func<ServerCallContext, Task<T>> call) => call(context);

    public sealed override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return continuation(request, context);
    }

    public sealed override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return Stream(context, c => continuation(requestStream, c));
    }

    public sealed override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return Stream(context, async c =>
        {
            await continuation(request, responseStream, c).ConfigureAwait(false);
            return true;
        });
    }

    public sealed override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return Stream(context, async c =>
        {
            await continuation(requestStream, responseStream, c).ConfigureAwait(false);
            return true;
        });
    }
}
