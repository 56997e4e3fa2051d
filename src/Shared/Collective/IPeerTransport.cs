using System.Buffers.Binary;

namespace Dtrain.Collective;

/// <summary>How tensor bytes travel between two workers.</summary>
public enum DataTransport
{
    /// <summary>Shared memory when the peer is on the same host (its /dev/shm is ours), TCP otherwise.</summary>
    Auto,

    /// <summary>A memory-mapped ring buffer in /dev/shm per directed pair (same host only).</summary>
    Shm,

    /// <summary>A plain TCP connection per directed pair (TLS when the cluster has TLS).</summary>
    Tcp,

    /// <summary>The gRPC <c>Push</c> streams (the fallback).</summary>
    Grpc,
}

/// <summary>Names of the transports as options and logs spell them.</summary>
public static class DataTransports
{
    /// <summary>Parses auto|shm|tcp|grpc (case-insensitive).</summary>
    public static bool TryParse(string? value, out DataTransport transport)
    {
        switch ((value ?? "").Trim().ToLowerInvariant())
        {
            case "auto": transport = DataTransport.Auto; return true;
            case "shm": transport = DataTransport.Shm; return true;
            case "tcp": transport = DataTransport.Tcp; return true;
            case "grpc": transport = DataTransport.Grpc; return true;
            default: transport = DataTransport.Auto; return false;
        }
    }

    /// <summary>What the logs call a link of this kind: "shared memory", "tcp", "tcp+tls", "grpc".</summary>
    public static string Describe(DataTransport transport, bool tls = false) => transport switch
    {
        DataTransport.Shm => "shared memory",
        DataTransport.Tcp => tls ? "tcp+tls" : "tcp",
        DataTransport.Grpc => tls ? "grpc+tls" : "grpc",
        _ => "auto",
    };
}

/// <summary>
/// Point-to-point messages between the workers of one (job, generation): send a piece to any rank, receive from any
/// rank by tag (pieces from one sender may arrive in any order; the tag matches them). The ring all-reduce runs over it
/// through <see cref="PeerRingTransport"/>; pipeline channels can use it the same way.
/// </summary>
public interface IPeerTransport : IAsyncDisposable
{
    /// <summary>This worker's rank, 0 .. <see cref="WorldSize"/> - 1.</summary>
    int Rank { get; }

    /// <summary>Number of workers.</summary>
    int WorldSize { get; }

    /// <summary>A rank for error messages, e.g. "rank 2 (http://10.0.0.7:7001)".</summary>
    string DescribeRank(int rank);

    /// <summary>How bytes to <paramref name="peer"/> travel ("shared memory", "tcp", ...), or null when this worker has no link to it.</summary>
    string? LinkTo(int peer);

    /// <summary>Sends a piece to <paramref name="peer"/>; the caller may reuse the piece's memory when this completes. Failures: <see cref="RingTransportException"/>.</summary>
    ValueTask SendAsync(int peer, RingPiece piece, CancellationToken cancellationToken);

    /// <summary>Receives the piece with this tag from <paramref name="peer"/> (the caller disposes it). Failures: <see cref="RingTransportException"/>.</summary>
    ValueTask<RingPiece> ReceiveAsync(int peer, RingTag tag, CancellationToken cancellationToken);

    /// <summary>Optional: where pieces from <paramref name="peer"/> land in place (see <see cref="IRingTransport.Expect"/>); null when this transport cannot.</summary>
    RingLandingZone? Expect(int peer, IReadOnlyList<RingLanding> landings) => null;
}

/// <summary>The ring over a point-to-point transport: send to rank + 1, receive from rank - 1.</summary>
public sealed class PeerRingTransport(IPeerTransport peers) : IRingTransport
{
    public IPeerTransport Peers { get; } = peers ?? throw new ArgumentNullException(nameof(peers));

    public int Rank => Peers.Rank;

    public int WorldSize => Peers.WorldSize;

    public string DescribeRank(int rank) => Peers.DescribeRank(rank);

    public ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken) => Peers.SendAsync((Rank + 1) % WorldSize, piece, cancellationToken);

    public ValueTask<RingPiece> ReceiveAsync(RingTag tag, CancellationToken cancellationToken) => Peers.ReceiveAsync((Rank - 1 + WorldSize) % WorldSize, tag, cancellationToken);

    public RingLandingZone? Expect(IReadOnlyList<RingLanding> landings) => Peers.Expect((Rank - 1 + WorldSize) % WorldSize, landings);

    public ValueTask DisposeAsync() => Peers.DisposeAsync();
}

/// <summary>One direction of bytes to one peer (a shared-memory ring buffer or a TCP connection).</summary>
internal interface IOutboundLink : IAsyncDisposable
{
    /// <summary>"shared memory", "tcp", "tcp+tls".</summary>
    string Kind { get; }

    /// <summary>Writes the frame; the piece's memory is not read after this completes.</summary>
    ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken);

    /// <summary>Cancelled when the link broke (the peer closed, died or the connection failed).</summary>
    CancellationToken Broken { get; }

    /// <summary>Why the link broke, or null.</summary>
    Exception? Fault { get; }
}

/// <summary>
/// A point-to-point transport made of per-peer links: outbound links this worker opened, and inbound mailboxes that
/// the links of other workers fill (through <see cref="DataPlane"/>, or the gRPC <see cref="CollectiveService"/>).
/// </summary>
internal sealed class PeerMesh(int rank, int worldSize, string[] peers, IReadOnlyDictionary<int, IOutboundLink> outbound,
    IReadOnlyDictionary<int, RingMailbox> inbound, Func<ValueTask> leave) : IPeerTransport
{
    private int _disposed;

    public int Rank { get; } = rank;

    public int WorldSize { get; } = worldSize;

    public string DescribeRank(int rank) => rank >= 0 && rank < peers.Length ? $"rank {rank} ({peers[rank]})" : $"rank {rank}";

    public string? LinkTo(int peer) => outbound.TryGetValue(peer, out var link) ? link.Kind : null;

    public async ValueTask SendAsync(int peer, RingPiece piece, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(piece);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (!outbound.TryGetValue(peer, out var link)) throw new InvalidOperationException($"rank {Rank} has no link to {DescribeRank(peer)}");
        try
        {
            await link.SendAsync(piece, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not (RingTransportException or OperationCanceledException))
        {
            throw new RingTransportException($"{link.Kind} link to {DescribeRank(peer)} failed: {ex.Message}", peer, DescribeRank(peer), ex);
        }
    }

    /// <summary>
    /// Waits for the piece; fails as soon as any outbound link of this worker breaks too (as the gRPC ring does): in a
    /// ring, a dead right neighbour means the operation cannot finish, whatever the left one still sends.
    /// </summary>
    public async ValueTask<RingPiece> ReceiveAsync(int peer, RingTag tag, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (!inbound.TryGetValue(peer, out var mailbox)) throw new InvalidOperationException($"rank {Rank} has no link from {DescribeRank(peer)}");
        ThrowIfBroken();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource([cancellationToken, .. outbound.Values.Select(l => l.Broken)]);
        try
        {
            return await mailbox.ReceiveAsync(tag, ex => new RingTransportException($"cannot receive {tag} from {DescribeRank(peer)}: {ex.Message}", peer, DescribeRank(peer), ex), linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw;
        }
    }

    /// <summary>Pieces from <paramref name="peer"/> land where the caller says; the zone is broken as soon as any outbound link of this worker breaks (see <see cref="ReceiveAsync"/>).</summary>
    public RingLandingZone? Expect(int peer, IReadOnlyList<RingLanding> landings)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (!inbound.TryGetValue(peer, out var mailbox)) throw new InvalidOperationException($"rank {Rank} has no link from {DescribeRank(peer)}");
        mailbox.Expect(landings, ex => new RingTransportException($"cannot receive from {DescribeRank(peer)}: {ex.Message}", peer, DescribeRank(peer), ex));
        var broken = outbound.Count == 0 ? null : CancellationTokenSource.CreateLinkedTokenSource([.. outbound.Values.Select(l => l.Broken)]);
        return new RingLandingZone(() =>
        {
            mailbox.Revoke(landings);
            broken?.Dispose();
        }, broken?.Token ?? CancellationToken.None, BrokenFailure);
    }

    private RingTransportException? BrokenFailure()
    {
        foreach (var (rank, link) in outbound)
            if (link.Broken.IsCancellationRequested && link.Fault is { } fault)
                return new RingTransportException($"{link.Kind} link to {DescribeRank(rank)} failed: {fault.Message}", rank, DescribeRank(rank), fault);
        return null;
    }

    private void ThrowIfBroken()
    {
        if (BrokenFailure() is { } broken) throw broken;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        foreach (var link in outbound.Values) await link.DisposeAsync().ConfigureAwait(false);
        await leave().ConfigureAwait(false);
    }
}

/// <summary>
/// The frame every non-gRPC link writes before a piece's bytes (little-endian, 72 bytes): operation (8), phase (4),
/// ring step (4), piece (4), pieces (4), offset (8), byte length (4), message kind (4), then up to four int64
/// dimensions (32) — the tensor's shape for a <see cref="PeerMessageKind.StageTensor"/> piece, zeros for an
/// all-reduce piece. Receivers check it as <see cref="CollectiveService"/> checks a chunk, and a link accepts only
/// the kind of message its channel carries (<see cref="RingMailbox.Kind"/>).
/// </summary>
internal static class PieceFrame
{
    public const int Size = 72;

    /// <summary>Most dimensions a stage tensor may have on the wire.</summary>
    public const int MaxDims = 4;

    /// <summary>Largest element count a stage tensor may announce: 2^29 - 1 floats, so that its bytes fit one span (2 GiB).</summary>
    public const long MaxTensorElements = int.MaxValue / sizeof(float);

    public static void Write(Span<byte> header, RingPiece piece)
    {
        var tag = piece.Tag;
        BinaryPrimitives.WriteInt64LittleEndian(header, tag.Operation);
        BinaryPrimitives.WriteInt32LittleEndian(header[8..], tag.Phase);
        BinaryPrimitives.WriteInt32LittleEndian(header[12..], tag.RingStep);
        BinaryPrimitives.WriteInt32LittleEndian(header[16..], tag.Piece);
        BinaryPrimitives.WriteInt32LittleEndian(header[20..], piece.Pieces);
        BinaryPrimitives.WriteInt64LittleEndian(header[24..], piece.Offset);
        BinaryPrimitives.WriteInt32LittleEndian(header[32..], piece.Bytes.Length);
        BinaryPrimitives.WriteInt32LittleEndian(header[36..], (int)tag.Kind);
        var shape = piece.Shape ?? [];
        if (shape.Length > MaxDims) throw new ArgumentException($"a stage tensor of {shape.Length} dimensions: at most {MaxDims} travel on a link", nameof(piece));
        for (var d = 0; d < MaxDims; d++) BinaryPrimitives.WriteInt64LittleEndian(header[(40 + 8 * d)..], d < shape.Length ? shape[d] : 0);
    }

    /// <summary>
    /// Reads and checks a header for a link that carries <paramref name="kind"/> messages; throws
    /// <see cref="InvalidDataException"/> naming what is wrong. The shape is null for all-reduce pieces.
    /// </summary>
    public static (RingTag Tag, int Pieces, long Offset, int Length, long[]? Shape) Read(ReadOnlySpan<byte> header, int maxBytes, int worldSize,
        PeerMessageKind kind = PeerMessageKind.AllReduce)
    {
        var rawKind = BinaryPrimitives.ReadInt32LittleEndian(header[36..]);
        if (rawKind is not ((int)PeerMessageKind.AllReduce or (int)PeerMessageKind.StageTensor))
            throw new InvalidDataException($"message kind {rawKind} is neither 0 (all-reduce piece) nor 1 (stage tensor)");
        var tag = new RingTag(
            BinaryPrimitives.ReadInt64LittleEndian(header),
            BinaryPrimitives.ReadInt32LittleEndian(header[8..]),
            BinaryPrimitives.ReadInt32LittleEndian(header[12..]),
            BinaryPrimitives.ReadInt32LittleEndian(header[16..]),
            (PeerMessageKind)rawKind);
        if (tag.Kind != kind)
            throw new InvalidDataException($"{(tag.Kind == PeerMessageKind.StageTensor ? "a stage tensor" : "an all-reduce piece")} on a link that carries {Describe(kind)}s only");
        var pieces = BinaryPrimitives.ReadInt32LittleEndian(header[20..]);
        var offset = BinaryPrimitives.ReadInt64LittleEndian(header[24..]);
        var length = BinaryPrimitives.ReadInt32LittleEndian(header[32..]);
        if (length < 0 || length > maxBytes || length % sizeof(float) != 0)
            throw new InvalidDataException($"piece of {length} bytes: must be whole float32 values, at most {maxBytes} bytes");
        if (tag.Kind == PeerMessageKind.AllReduce)
        {
            if (tag.Phase is not (0 or 1) || tag.RingStep < 0 || tag.RingStep > Math.Max(0, worldSize - 2) || pieces < 1 || tag.Piece < 0 || tag.Piece >= pieces || offset < 0)
                throw new InvalidDataException($"piece position out of range: phase {tag.Phase}, ring step {tag.RingStep}, piece {tag.Piece}/{pieces}, offset {offset}");
            for (var d = 0; d < MaxDims; d++)
                if (BinaryPrimitives.ReadInt64LittleEndian(header[(40 + 8 * d)..]) != 0)
                    throw new InvalidDataException($"all-reduce piece {tag} carries a tensor shape (dimension {d} is not 0)");
            return (tag, pieces, offset, length, null);
        }
        if (tag.Phase is not (0 or 1) || tag.Operation < 0 || tag.RingStep < 0 || pieces < 1 || tag.Piece < 0 || tag.Piece >= pieces || offset < 0)
            throw new InvalidDataException($"stage tensor position out of range: phase {tag.Phase} (0 activation, 1 gradient), step {tag.Operation}, micro-batch {tag.RingStep}, piece {tag.Piece}/{pieces}, offset {offset}");
        var dims = new List<long>(MaxDims);
        var elements = 1L;
        var ended = false;
        for (var d = 0; d < MaxDims; d++)
        {
            var size = BinaryPrimitives.ReadInt64LittleEndian(header[(40 + 8 * d)..]);
            if (size == 0 && d > 0)
            {
                ended = true;
                continue;
            }
            if (size < 1 || ended || size > MaxTensorElements || (elements *= size) > MaxTensorElements)
                throw new InvalidDataException($"{tag}: shape dimension {d} of {size} is not valid (1 to {MaxDims} positive dimensions, then zeros, at most {MaxTensorElements} elements)");
            dims.Add(size);
        }
        if (offset + length / sizeof(float) > elements)
            throw new InvalidDataException($"{tag}: {length / sizeof(float)} values at offset {offset} run past the tensor's {elements} elements (shape [{string.Join(", ", dims)}])");
        return (tag, pieces, offset, length, [.. dims]);
    }

    private static string Describe(PeerMessageKind kind) => kind == PeerMessageKind.StageTensor ? "stage tensor" : "all-reduce piece";
}
