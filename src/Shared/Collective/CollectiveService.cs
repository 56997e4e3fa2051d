using System.Buffers;
using System.Globalization;
using System.Net;
using System.Text;
using Dtrain.Protos.Collective;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
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
/// <c>MaxReceiveMessageSize</c> = maxPieceFloats * 4 + 64 KiB; HTTP/2 stream/connection windows of 16/32 MiB; HTTP/2
/// keep-alive pings every 10 s (20 s timeout) so a silently dead sender is noticed.
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
    public new virtual Task<DataPlaneOffer> Hello(DataPlaneHello request, ServerCallContext context) => Task.FromResult(dataPlane.Hello(request, context));

    /// <summary>Maps the left neighbour's shared-memory ring (see <see cref="DataPlane"/>).</summary>
    public new virtual Task<SharedMemoryAttached> AttachSharedMemory(SharedMemoryAttach request, ServerCallContext context) => Task.FromResult(dataPlane.AttachSharedMemory(request, context));

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

/// <summary>
/// A received <c>RingChunk</c> whose data lives in a buffer rented from <see cref="ArrayPool{T}.Shared"/>
/// (server side only). Disposing it returns the buffer.
/// </summary>
public sealed class PooledRingChunk : IDisposable
{
    private const int MaxJobIdBytes = 4096;
    private byte[]? _data;
    private int _length;

    public string JobId { get; private set; } = "";

    public long Generation { get; private set; }

    public int SenderRank { get; private set; }

    public long Operation { get; private set; }

    public int Phase { get; private set; }

    public int RingStep { get; private set; }

    public int Piece { get; private set; }

    public int Pieces { get; private set; }

    public long Offset { get; private set; }

    /// <summary>The float32 little-endian bytes (valid until disposed).</summary>
    public ReadOnlyMemory<byte> Data => _data is null ? ReadOnlyMemory<byte>.Empty : _data.AsMemory(0, _length);

    public void Dispose()
    {
        var data = Interlocked.Exchange(ref _data, null);
        if (data is not null) ArrayPool<byte>.Shared.Return(data);
    }

    /// <summary>Parses the protobuf encoding of <c>dtrain.collective.v1.RingChunk</c> (unknown fields are skipped).</summary>
    public static PooledRingChunk Parse(ReadOnlySequence<byte> payload)
    {
        var reader = new SequenceReader<byte>(payload);
        var chunk = new PooledRingChunk();
        try
        {
            while (!reader.End)
            {
                var key = ReadVarint(ref reader);
                var field = key >> 3;
                var wire = (int)(key & 7);
                switch (field, wire)
                {
                    case (1, 2):
                        var textLength = ReadLength(ref reader, MaxJobIdBytes);
                        chunk.JobId = Encoding.UTF8.GetString(reader.UnreadSequence.Slice(0, textLength));
                        reader.Advance(textLength);
                        break;
                    case (2, 0): chunk.Generation = (long)ReadVarint(ref reader); break;
                    case (3, 0): chunk.SenderRank = (int)ReadVarint(ref reader); break;
                    case (4, 0): chunk.Operation = (long)ReadVarint(ref reader); break;
                    case (5, 0): chunk.Phase = (int)ReadVarint(ref reader); break;
                    case (6, 0): chunk.RingStep = (int)ReadVarint(ref reader); break;
                    case (7, 0): chunk.Piece = (int)ReadVarint(ref reader); break;
                    case (8, 0): chunk.Pieces = (int)ReadVarint(ref reader); break;
                    case (9, 0): chunk.Offset = (long)ReadVarint(ref reader); break;
                    case (10, 2):
                        var length = ReadLength(ref reader, int.MaxValue);
                        chunk.Dispose();   // a repeated field: the last one wins
                        chunk._data = ArrayPool<byte>.Shared.Rent(length);
                        chunk._length = length;
                        reader.UnreadSequence.Slice(0, length).CopyTo(chunk._data);
                        reader.Advance(length);
                        break;
                    default: Skip(ref reader, wire); break;
                }
            }
            return chunk;
        }
        catch
        {
            chunk.Dispose();
            throw;
        }
    }

    private static ulong ReadVarint(ref SequenceReader<byte> reader)
    {
        ulong value = 0;
        for (var shift = 0; shift < 64; shift += 7)
        {
            if (!reader.TryRead(out var b)) throw new InvalidDataException("truncated varint in RingChunk");
            value |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80) return value;
        }
        throw new InvalidDataException("malformed varint in RingChunk");
    }

    private static int ReadLength(ref SequenceReader<byte> reader, int max)
    {
        var length = ReadVarint(ref reader);
        if (length > (ulong)Math.Min(max, reader.Remaining)) throw new InvalidDataException($"RingChunk field of {length} bytes exceeds its limit or the message");
        return (int)length;
    }

    private static void Skip(ref SequenceReader<byte> reader, int wire)
    {
        switch (wire)
        {
            case 0: ReadVarint(ref reader); break;
            case 1: Advance(ref reader, 8); break;
            case 2: Advance(ref reader, ReadLength(ref reader, int.MaxValue)); break;
            case 5: Advance(ref reader, 4); break;
            default: throw new InvalidDataException($"unsupported protobuf wire type {wire} in RingChunk");
        }
    }

    private static void Advance(ref SequenceReader<byte> reader, int count)
    {
        if (reader.Remaining < count) throw new InvalidDataException("truncated RingChunk");
        reader.Advance(count);
    }
}

/// <summary>
/// The rings this worker takes part in, one mailbox per job (its current generation). Register it as a singleton
/// (done by <see cref="CollectiveHosting.AddDtrainCollective(IServiceCollection, int)"/>).
/// </summary>
public sealed class RingMailboxes(int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, RingMailbox> _current = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _newest = new(StringComparer.Ordinal);

    /// <summary>Largest piece accepted from a neighbour, in floats; must match the senders' <see cref="RingAllReduce.MaxPieceFloats"/>.</summary>
    public int MaxPieceFloats { get; } = maxPieceFloats > 0 ? maxPieceFloats : throw new ArgumentOutOfRangeException(nameof(maxPieceFloats));

    /// <summary>
    /// Registers the mailbox of channel <paramref name="jobId"/> (a job's ring, or a stage link's channel id, see
    /// <see cref="StageChannels"/>) at <paramref name="generation"/>, superseding older generations of that channel.
    /// </summary>
    internal RingMailbox Register(string jobId, long generation, int rank, int worldSize, Rpc.ExpectedPeer? expectedLeft = null, int? sender = null,
        PeerMessageKind kind = PeerMessageKind.AllReduce)
    {
        RingMailbox? superseded = null;
        RingMailbox mailbox;
        lock (_gate)
        {
            if (_newest.TryGetValue(jobId, out var newest) && newest >= generation)
                throw new InvalidOperationException($"ring {jobId}: generation {newest} is already registered here, cannot register generation {generation}");
            _current.Remove(jobId, out superseded);
            mailbox = new RingMailbox(jobId, generation, rank, worldSize, sender, kind) { ExpectedLeft = expectedLeft };
            _current[jobId] = mailbox;
            _newest[jobId] = generation;
        }
        superseded?.Close(new InvalidOperationException($"ring {jobId}/{superseded.Generation} superseded by generation {generation}"));
        return mailbox;
    }

    internal void Unregister(RingMailbox mailbox, Exception reason)
    {
        lock (_gate)
        {
            if (_current.TryGetValue(mailbox.JobId, out var current) && current == mailbox) _current.Remove(mailbox.JobId);
        }
        mailbox.Close(reason);
    }

    /// <summary>The open mailbox of that ring, or null, a refusal kind (not-registered / superseded / closed) and why.</summary>
    internal (RingMailbox? Mailbox, string? Refusal, string? Detail) Find(string jobId, long generation)
    {
        lock (_gate)
        {
            var newest = _newest.TryGetValue(jobId, out var n) ? n : long.MinValue;
            if (generation < newest) return (null, "superseded", $"ring {jobId}/{generation} is superseded by generation {newest} on this worker");
            if (_current.TryGetValue(jobId, out var mailbox) && mailbox.Generation == generation && mailbox.ClosedReason is null) return (mailbox, null, null);
            if (generation == newest) return (null, "closed", $"ring {jobId}/{generation} is closed on this worker");
            return (null, "not-registered", $"no ring {jobId}/{generation} is registered on this worker (yet)");
        }
    }
}

/// <summary>One-call registration of the collective endpoint in a worker's ASP.NET Core host.</summary>
public static class CollectiveHosting
{
    /// <summary>Room for the RingChunk fields around the data bytes.</summary>
    public const int MessageOverheadBytes = 64 * 1024;

    /// <summary>
    /// Listens on <paramref name="endpoint"/> with HTTP/2 only and registers gRPC, <see cref="CollectiveService"/> options
    /// and the <see cref="RingMailboxes"/> singleton. Then call <see cref="MapDtrainCollective"/> on the built app.
    /// </summary>
    public static WebApplicationBuilder AddDtrainCollective(this WebApplicationBuilder builder, IPEndPoint endpoint, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(endpoint);
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.ListenDtrainCollective(endpoint));
        builder.Services.AddDtrainCollective(maxPieceFloats);
        return builder;
    }

    /// <summary>gRPC with the message limits, HTTP/2 flow-control windows and keep-alive, and the <see cref="RingMailboxes"/> singleton (no listener).</summary>
    public static IServiceCollection AddDtrainCollective(this IServiceCollection services, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddSingleton(new RingMailboxes(maxPieceFloats));
        services.AddSingleton(sp => new DataPlane(sp.GetRequiredService<RingMailboxes>(), sp.GetService<DataPlaneOptions>(), sp.GetService<Microsoft.Extensions.Logging.ILogger<DataPlane>>()));
        services.AddGrpc().AddServiceOptions<CollectiveService>(options =>
        {
            options.MaxReceiveMessageSize = maxPieceFloats * sizeof(float) + MessageOverheadBytes;
            options.MaxSendMessageSize = MessageOverheadBytes;
        });
        services.Configure<KestrelServerOptions>(ConfigureHttp2Limits);
        return services;
    }

    /// <summary>Large HTTP/2 windows (a 1 MiB piece must not wait for window updates) and keep-alive pings.</summary>
    public static void ConfigureHttp2Limits(KestrelServerOptions kestrel)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        kestrel.Limits.Http2.InitialStreamWindowSize = 16 * 1024 * 1024;
        kestrel.Limits.Http2.InitialConnectionWindowSize = 32 * 1024 * 1024;
        kestrel.Limits.Http2.KeepAlivePingDelay = TimeSpan.FromSeconds(10);
        kestrel.Limits.Http2.KeepAlivePingTimeout = TimeSpan.FromSeconds(20);
    }

    /// <summary>An HTTP/2-only (cleartext h2c) listener for the collective traffic.</summary>
    public static KestrelServerOptions ListenDtrainCollective(this KestrelServerOptions kestrel, IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        kestrel.Listen(endpoint, listen => listen.Protocols = HttpProtocols.Http2);
        return kestrel;
    }

    /// <summary>Maps <see cref="CollectiveService"/> (the <c>Push</c> endpoint).</summary>
    public static GrpcServiceEndpointConventionBuilder MapDtrainCollective(this IEndpointRouteBuilder endpoints) =>
        endpoints.MapGrpcService<CollectiveService>();
}
