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

    public sealed override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return continuation(request, context);
    }

    public sealed override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return continuation(requestStream, context);
    }

    public sealed override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return continuation(request, responseStream, context);
    }

    public sealed override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Admit(context);
        return continuation(requestStream, responseStream, context);
    }
}
