using Grpc.Core;

namespace Dtrain.Rpc;

/// <summary>
/// Client-streaming calls whose request stream can reach the server with fewer messages than the client wrote, and
/// the one way dtrain tells and handles it: the server refuses a stream without a message where its protocol says
/// there is at least one (<see cref="EmptyStreamRefusal"/>: Unavailable with the <see cref="RefusalTrailer"/> trailer
/// <see cref="EmptyStream"/>), and the client (<see cref="SendAsync{TRequest,TResponse}(string, Func{AsyncClientStreamingCall{TRequest,TResponse}}, IReadOnlyList{TRequest}, Func{TResponse,long}?, CancellationToken)"/>) sends the call again on
/// that answer, at most <see cref="Attempts"/> times, and checks the count of messages the server says it read
/// against the count it wrote: a call is never taken as done when messages were lost.
/// <para>
/// How a stream arrives empty: when Kestrel closes an HTTP/2 connection (GOAWAY) under a call whose HEADERS and DATA
/// were already written past its last stream id, .NET's HTTP/2 client replays the request on a new connection, and
/// grpc-dotnet's request content, whose messages went to the first connection, replays as HEADERS and END_STREAM only;
/// the writes after the replay began fail (HttpRequestException "The request was aborted"). The client still believes
/// the first messages were sent. (Seen for <c>Jobs.Upload</c>, <see cref="FileUpload"/>: a connection is closed that
/// way when a server ended a client-streaming call early while the client was still writing a large message.)
/// </para>
/// </summary>
public static class ClientStreams
{
    /// <summary>The trailer that says why a server refused a call, when the status code alone does not.</summary>
    public const string RefusalTrailer = "dtrain-refusal";

    /// <summary><see cref="RefusalTrailer"/>'s value for a client-streaming call whose request stream carried no message.</summary>
    public const string EmptyStream = "empty-stream";

    /// <summary>How many times one call is sent at most while its stream keeps arriving empty.</summary>
    public const int Attempts = 3;

    /// <summary>Whether <paramref name="e"/> is a server's answer to a request stream that arrived without a message.</summary>
    public static bool ArrivedEmpty(RpcException e)
    {
        ArgumentNullException.ThrowIfNull(e);
        return e.StatusCode == StatusCode.Unavailable && e.Trailers.GetValue(RefusalTrailer) == EmptyStream;
    }

    /// <summary>
    /// A server's refusal of call <paramref name="call"/> (e.g. "LoadShard on worker w-1") whose request stream ended
    /// before its first message, where the protocol has at least one; nothing of it was applied, so the client may send it again.
    /// </summary>
    public static RpcException EmptyStreamRefusal(string call, string firstMessage) => new(
        new Status(StatusCode.Unavailable,
            $"{call} received no message: its request stream ended before the first one ({firstMessage}), so nothing was applied. " +
            "A client that sent one lost it on the way (e.g. an HTTP/2 request replayed on a new connection without its messages); send the call again"),
        new Metadata { { RefusalTrailer, EmptyStream } });

    /// <summary>
    /// Sends <paramref name="messages"/> (at least one) on calls made by <paramref name="open"/> and returns the reply:
    /// again, on a new call, while the server answers that the stream arrived empty (at most <see cref="Attempts"/> calls in
    /// all; the last answer goes up as it is); then <paramref name="received"/> (the count of messages the server
    /// says it read) must equal the count written, or <see cref="StreamLossException"/> names <paramref name="what"/> and what was lost.
    /// A write that fails (the call ended, or its HTTP/2 stream was cut while the request is replayed) ends the writes;
    /// the request stream is ended in every case and the call's final status says what happened.
    /// </summary>
    public static async Task<TResponse> SendAsync<TRequest, TResponse>(string what, Func<AsyncClientStreamingCall<TRequest, TResponse>> open,
        IReadOnlyList<TRequest> messages, Func<TResponse, long>? received, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(open);
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0) throw new ArgumentException($"{what}: a client-streaming call of dtrain sends at least one message", nameof(messages));
        var (reply, attempt) = await SendWithRetriesAsync(open, messages, cancel).ConfigureAwait(false);
        if (received is not null && received(reply) is var count && count != messages.Count)
            throw new StreamLossException($"{what}: the server read {count} of the {messages.Count} message(s) sent on attempt {attempt}; " +
                $"{messages.Count - count} lost on the way (or read twice) — the call is not taken as done", count, messages.Count);
        return reply;
    }

    /// <summary>
    /// <see cref="SendAsync{TRequest,TResponse}(string, Func{AsyncClientStreamingCall{TRequest,TResponse}}, IReadOnlyList{TRequest}, Func{TResponse,long}?, CancellationToken)"/>
    /// of messages produced as they are sent (enumerated again for each call, e.g. a file read a chunk at a time), without
    /// the count check: sent again while the server answers that the stream arrived empty. A failure to produce a message
    /// (reading the file) goes up as it is.
    /// </summary>
    public static async Task<TResponse> SendAsync<TRequest, TResponse>(Func<AsyncClientStreamingCall<TRequest, TResponse>> open, IEnumerable<TRequest> messages, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(open);
        ArgumentNullException.ThrowIfNull(messages);
        return (await SendWithRetriesAsync(open, messages, cancel).ConfigureAwait(false)).Reply;
    }

    /// <summary>The reply of the first call whose stream did not arrive empty (at most <see cref="Attempts"/> calls; the last answer goes up as it is), and that call's number.</summary>
    private static async Task<(TResponse Reply, int Attempt)> SendWithRetriesAsync<TRequest, TResponse>(Func<AsyncClientStreamingCall<TRequest, TResponse>> open,
        IEnumerable<TRequest> messages, CancellationToken cancel)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return (await SendOnceAsync(open, messages, cancel).ConfigureAwait(false), attempt);
            }
            catch (RpcException e) when (ArrivedEmpty(e) && attempt < Attempts)
            {
            }
        }
    }

    private static async Task<TResponse> SendOnceAsync<TRequest, TResponse>(Func<AsyncClientStreamingCall<TRequest, TResponse>> open,
        IEnumerable<TRequest> messages, CancellationToken cancel)
    {
        using var call = open();
        foreach (var message in messages)
        {
            // The server answered before the end (it refused the call): no more messages for it.
            if (call.ResponseAsync.IsCompleted) break;
            try
            {
                await call.RequestStream.WriteAsync(message, cancel).ConfigureAwait(false);
            }
            catch (Exception e) when (e is RpcException or HttpRequestException or IOException && !cancel.IsCancellationRequested)
            {
                // The call ended while sending (RpcException), or its HTTP/2 stream was cut while .NET replays the request
                // on a new connection, which these messages never reach (HttpRequestException). The final status, read
                // below, says what happened: for a replay, the server's empty-stream answer.
                break;
            }
        }
        // Ends the request stream in every case: a replayed request waits for it, and the server answers then.
        try
        {
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or HttpRequestException or IOException or InvalidOperationException && !cancel.IsCancellationRequested)
        {
            // Already ended by the server's answer: the status below says it.
        }
        return await call.ResponseAsync.ConfigureAwait(false);
    }
}

/// <summary>A client-streaming call whose server read fewer (or more) messages than the client wrote (<see cref="ClientStreams"/>).</summary>
public sealed class StreamLossException(string message, long received, long sent) : IOException(message)
{
    public long Received { get; } = received;
    public long Sent { get; } = sent;
}
