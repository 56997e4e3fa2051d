using Dtrain.Protos.Jobs;
using Grpc.Core;

namespace Dtrain.Rpc;

/// <summary>
/// Sends a file to the coordinator's <c>Jobs.Upload</c> (<see cref="FileChunks"/>, 512 KiB a message, under the smallest
/// allowed message limit) and returns its upload handle; the one upload of the CLI and of <c>DtrainClient</c>.
/// <para>
/// An upload whose request stream reached the coordinator without a message is sent again (at most
/// <see cref="Attempts"/> times in all): this client always sends at least one, so such a stream lost its messages on
/// the way. That happens when the coordinator's Kestrel closes the HTTP/2 connection (GOAWAY) under a call whose
/// messages were already written: .NET's HTTP/2 client replays the request on a new connection, and grpc-dotnet's
/// request content, whose messages went to the first connection, replays as headers and an end of stream only. The
/// coordinator says so with Unavailable and the <see cref="RefusalTrailer"/> trailer <see cref="EmptyStream"/>
/// (a connection is closed that way, for one, when the coordinator refused an upload mid-stream: .NET's client
/// still sends the rest of a message it was writing after it reset the stream, which Kestrel answers with GOAWAY).
/// A write after the replay began fails (HttpRequestException) as its stream is gone; the request stream is ended
/// all the same, so the replayed request reaches the coordinator empty and gets that answer. The other client-streaming
/// calls (a worker's LoadShard and LoadState) go through <see cref="ClientStreams"/>, which does the same and checks counts.
/// </para>
/// </summary>
public static class FileUpload
{
    /// <summary>The trailer that says why the coordinator refused an upload, when the status code alone does not.</summary>
    public const string RefusalTrailer = ClientStreams.RefusalTrailer;

    /// <summary><see cref="RefusalTrailer"/>'s value for an upload whose request stream carried no message.</summary>
    public const string EmptyStream = ClientStreams.EmptyStream;

    /// <summary>How many times one file is sent at most while its stream keeps arriving empty.</summary>
    public const int Attempts = ClientStreams.Attempts;

    /// <summary>Message size: under the smallest allowed message limit.</summary>
    public const int ChunkBytes = 512 * 1024;

    /// <summary>Whether <paramref name="e"/> is the coordinator's answer to an upload stream that arrived without a message.</summary>
    public static bool ArrivedEmpty(RpcException e) => ClientStreams.ArrivedEmpty(e);

    /// <summary>Uploads <paramref name="path"/>; returns its handle. The coordinator's refusal is an <see cref="RpcException"/> with its status.</summary>
    public static string Send(Jobs.JobsClient client, string path) => SendAsync(client, path, CancellationToken.None).GetAwaiter().GetResult();

    /// <inheritdoc cref="Send"/>
    public static async Task<string> SendAsync(Jobs.JobsClient client, string path, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(client);
        // The file is read again, a chunk at a time, for each call; a failure to read it is the user's and goes up as it is.
        var reply = await ClientStreams.SendAsync(() => client.Upload(cancellationToken: cancellationToken), FileChunks.Read(path, ChunkBytes), cancellationToken).ConfigureAwait(false);
        return reply.FileId;
    }
}
