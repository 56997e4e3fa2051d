using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Dtrain.Tests.Support;

/// <summary>
/// The client's view of a client-streaming call that .NET's HTTP/2 client replays on a new connection after a GOAWAY
/// (grpc-dotnet then replays it without its messages): the first call's first write goes to the HTTP/2 stream that was
/// cut (it seems to succeed), its later writes fail as .NET's do then (HttpRequestException "The request was aborted"),
/// and only its end of stream reaches the server. Later calls pass untouched. <see cref="Calls"/> counts every call.
/// </summary>
public sealed class ReplayedFirstCall : Interceptor
{
    public int Calls;

    public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(
        ClientInterceptorContext<TRequest, TResponse> context, AsyncClientStreamingCallContinuation<TRequest, TResponse> continuation)
    {
        var call = continuation(context);
        if (Interlocked.Increment(ref Calls) > 1) return call;
        return new AsyncClientStreamingCall<TRequest, TResponse>(new Cut<TRequest>(call.RequestStream),
            call.ResponseAsync, call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
    }

    sealed class Cut<T>(IClientStreamWriter<T> inner) : IClientStreamWriter<T>
    {
        int writes;

        public WriteOptions? WriteOptions { get => inner.WriteOptions; set => inner.WriteOptions = value; }

        public Task WriteAsync(T message) => ++writes == 1
            ? Task.CompletedTask
            : Task.FromException(new HttpRequestException("The request was aborted.", new IOException("the HTTP/2 connection was closed (GOAWAY)")));

        public Task CompleteAsync() => inner.CompleteAsync();
    }
}
