using System.Globalization;
using Dtrain.Protos.Collective;
using Google.Protobuf;
using Grpc.Core;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Collective;

/// <summary>
/// Server side of the ring: accepts the long-lived <c>Push</c> stream of this worker's left-hand neighbour and drops
/// its chunks into the mailbox of the (job, generation) ring registered by <see cref="GrpcRingTransport.ConnectAsync"/>.
/// </summary>
/// <remarks>
/// Host it with <see cref="CollectiveHosting"/> (one call on the builder, one on the app):
/// <code>
/// builder.AddDtrainCollective(new IPEndPoint(IPAddress.Any, port));   // Kestrel HTTP/2-only listener, gRPC, RingMailboxes singleton
/// app.MapDtrainCollective();                                          // MapGrpcService&lt;CollectiveService&gt;()
/// var mailboxes = app.Services.GetRequiredService&lt;RingMailboxes&gt;(); // pass to GrpcRingTransport.ConnectAsync
/// </code>
/// What that configures: the endpoint speaks HTTP/2 only (<c>Protocols = Http2</c>, cleartext h2c; a worker's own
/// listener, made by <see cref="Rpc.GrpcServerHost"/>, adds TLS); gRPC
/// <c>MaxReceiveMessageSize</c> = maxPieceFloats * 4 + 64 KiB; the HTTP/2 windows and keep-alive pings of
/// <see cref="Rpc.Http2Settings"/> (16/32 MiB, a ping after 10 s, 20 s to answer) so a silently dead sender is noticed.
/// Refusals: on a TLS server, a stream whose client certificate is not the left neighbour's (as registered with the
/// ring) gets PermissionDenied; a stream for an unknown (not yet registered) ring gets FailedPrecondition with trailer
/// <c>dtrain-refusal: not-registered</c> (the client retries until its connect timeout), one for an older generation
/// gets FailedPrecondition with <c>dtrain-refusal: superseded</c>; malformed or oversized chunks get InvalidArgument.
/// <para>
/// Binding: the class carries its own <see cref="BindServiceMethodAttribute"/>, so grpc-dotnet binds the same wire
/// method (<c>dtrain.collective.v1.Collective/Push</c>, same <c>RingChunk</c> bytes) to <see cref="Push(IAsyncStreamReader{PooledRingChunk}, ServerCallContext)"/>
/// with a parser that puts the data into pooled buffers: the generated parser would allocate a fresh 1 MiB array
/// (large-object heap) per piece, which costs about a quarter of the receive throughput.
/// </para>
/// </remarks>
[BindServiceMethod(typeof(CollectiveService), nameof(BindService))]
public class CollectiveService(RingMailboxes mailboxes, DataPlane dataPlane) : CollectiveGrpc.CollectiveBase
{
    internal const string JobHeader = "dtrain-job";
    internal const string GenerationHeader = "dtrain-generation";
    internal const string SenderHeader = "dtrain-sender";
    internal const string WorldHeader = "dtrain-world";
    internal const string AcceptedHeader = "dtrain-ring";
    internal const string RefusalTrailer = "dtrain-refusal";

    private static readonly Method<PooledRingChunk, PushReply> PushMethod = new(
        MethodType.ClientStreaming,
        CollectiveGrpc.Descriptor.FullName,
        "Push",
        Marshallers.Create<PooledRingChunk>(
            (_, _) => throw new NotSupportedException("the pooled chunk is receive-only"),
            context => PooledRingChunk.Parse(context.PayloadAsReadOnlySequence())),
        Marshallers.Create<PushReply>(
            (reply, context) =>
            {
                context.SetPayloadLength(reply.CalculateSize());
                reply.WriteTo(context.GetBufferWriter());
                context.Complete();
            },
            context => PushReply.Parser.ParseFrom(context.PayloadAsReadOnlySequence())));

    /// <summary>Called by grpc-dotnet (via the attribute) to bind <c>Push</c> to the pooled handler.</summary>
    public static void BindService(ServiceBinderBase serviceBinder, CollectiveService serviceImpl)
    {
        ArgumentNullException.ThrowIfNull(serviceBinder);
        serviceBinder.AddMethod(PushMethod, serviceImpl is null ? null! : serviceImpl.Push);
        serviceBinder.AddMethod(HelloMethod, serviceImpl is null ? null! : serviceImpl.Hello);
        serviceBinder.AddMethod(AttachMethod, serviceImpl is null ? null! : serviceImpl.AttachSharedMemory);
    }

    private static readonly Method<DataPlaneHello, DataPlaneOffer> HelloMethod = new(MethodType.Unary, CollectiveGrpc.Descriptor.FullName, "Hello",
        Marshallers.Create(m => m.ToByteArray(), DataPlaneHello.Parser.ParseFrom), Marshallers.Create(m => m.ToByteArray(), DataPlaneOffer.Parser.ParseFrom));

    private static readonly Method<SharedMemoryAttach, SharedMemoryAttached> AttachMethod = new(MethodType.Unary, CollectiveGrpc.Descriptor.FullName, "AttachSharedMemory",
        Marshallers.Create(m => m.ToByteArray(), SharedMemoryAttach.Parser.ParseFrom), Marshallers.Create(m => m.ToByteArray(), SharedMemoryAttached.Parser.ParseFrom));

    /// <summary>(Declared here, not overridden: grpc-dotnet binds only methods of the type carrying BindService.) Data-plane negotiation: where and how the left neighbour may send tensor bytes (see <see cref="DataPlane"/>).</summary>
    public new virtual Task<DataPlaneOffer> Hello(DataPlaneHello request, ServerCallContext context) => Task.FromResult(GrpcDataPlane.Hello(dataPlane, request, context));

    /// <summary>Maps the left neighbour's shared-memory ring (see <see cref="DataPlane"/>).</summary>
    public new virtual Task<SharedMemoryAttached> AttachSharedMemory(SharedMemoryAttach request, ServerCallContext context) => Task.FromResult(GrpcDataPlane.AttachSharedMemory(dataPlane, request, context));

    /// <summary>The Push handler (bound by <see cref="BindService"/>; virtual only because grpc-dotnet requires it).</summary>
    public virtual async Task<PushReply> Push(IAsyncStreamReader<PooledRingChunk> requestStream, ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(requestStream);
        ArgumentNullException.ThrowIfNull(context);
        var headers = context.RequestHeaders;
        var jobId = headers.GetValue(JobHeader);
        if (string.IsNullOrEmpty(jobId)
            || !long.TryParse(headers.GetValue(GenerationHeader), NumberStyles.Integer, CultureInfo.InvariantCulture, out var generation)
            || !int.TryParse(headers.GetValue(SenderHeader), NumberStyles.Integer, CultureInfo.InvariantCulture, out var sender)
            || !int.TryParse(headers.GetValue(WorldHeader), NumberStyles.Integer, CultureInfo.InvariantCulture, out var world))
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"a Push stream needs the request headers {JobHeader}, {GenerationHeader}, {SenderHeader} and {WorldHeader}"));

        var (mailbox, refusal, detail) = mailboxes.Find(jobId, generation);
        if (mailbox is null)
            throw new RpcException(new Status(StatusCode.FailedPrecondition, detail!), new Metadata { { RefusalTrailer, refusal! } });
        if (world != mailbox.WorldSize || sender != mailbox.LeftRank)
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"ring {jobId}/{generation}: rank {sender} of {world} is not the left neighbour of rank {mailbox.Rank} of {mailbox.WorldSize}"));
        // With TLS the sender is who its certificate says, not what its headers claim: only the left neighbour's
        // certificate (pinned by the coordinator) may feed this ring; anyone else is refused before attaching.
        if (Rpc.PeerIdentity.Of(context) is { } peer
            && (mailbox.ExpectedLeft is null ? $"rank {mailbox.Rank} was given no identity for its left neighbour" : mailbox.ExpectedLeft.Mismatch(peer)) is { } refused)
            throw new RpcException(new Status(StatusCode.PermissionDenied,
                $"ring {jobId}/{generation}: a stream claiming to be rank {sender} is refused: {refused}; rank {mailbox.Rank} accepts only its left neighbour rank {mailbox.LeftRank}"));
        if (!mailbox.TryAttachInbound())
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"ring {jobId}/{generation}: rank {mailbox.Rank} already has (or had) a stream from rank {sender}, or the ring is closed"));

        var maxBytes = mailboxes.MaxPieceFloats * sizeof(float);
        long received = 0;
        try
        {
            await context.WriteResponseHeadersAsync(new Metadata { { AcceptedHeader, "accepted" } }).ConfigureAwait(false);
            while (await requestStream.MoveNext(context.CancellationToken).ConfigureAwait(false))
            {
                var chunk = requestStream.Current;
                RingPiece piece;
                try
                {
                    if (chunk.JobId != jobId || chunk.Generation != generation || chunk.SenderRank != sender)
                        throw Invalid($"chunk of ring {chunk.JobId}/{chunk.Generation} from rank {chunk.SenderRank} on the stream of ring {jobId}/{generation} from rank {sender}");
                    if (chunk.Data.Length > maxBytes || chunk.Data.Length % sizeof(float) != 0)
                        throw Invalid($"chunk data of {chunk.Data.Length} bytes: must be whole float32 values, at most {maxBytes} bytes ({mailboxes.MaxPieceFloats} floats)");
                    if (chunk.Phase is not (0 or 1) || chunk.RingStep < 0 || chunk.RingStep > world - 2 || chunk.Pieces < 1 || chunk.Piece < 0 || chunk.Piece >= chunk.Pieces || chunk.Offset < 0)
                        throw Invalid($"chunk position out of range: phase {chunk.Phase}, ring step {chunk.RingStep}, piece {chunk.Piece}/{chunk.Pieces}, offset {chunk.Offset}");
                    // The piece takes over the pooled buffer; the reducer reads it as floats and disposing returns it.
                    piece = RingPiece.FromBytes(new RingTag(chunk.Operation, chunk.Phase, chunk.RingStep, chunk.Piece), chunk.Offset, chunk.Pieces, chunk.Data, chunk);
                }
                catch
                {
                    chunk.Dispose();
                    throw;
                }
                try
                {
                    mailbox.Deliver(piece);   // disposes the piece itself if it refuses it
                }
                catch (InvalidDataException ex)
                {
                    throw Invalid(ex.Message);
                }
                catch (InvalidOperationException ex)
                {
                    throw new RpcException(new Status(StatusCode.FailedPrecondition, ex.Message), new Metadata { { RefusalTrailer, "closed" } });
                }
                received++;
            }
            mailbox.CompleteInbound(null);
            return new PushReply { ChunksReceived = received };
        }
        catch (Exception ex)
        {
            mailbox.CompleteInbound(ex);
            throw;
        }

        RpcException Invalid(string detail) => new(new Status(StatusCode.InvalidArgument, $"ring {jobId}/{generation} from rank {sender}: {detail}"));
    }
}
