using System.Buffers;
using System.Runtime.InteropServices;

namespace Dtrain.Collective;

/// <summary>
/// The only thing <see cref="RingAllReduce"/> needs from the network: send pieces to the right-hand neighbour
/// (rank + 1 mod W) and receive pieces from the left-hand neighbour (rank - 1 mod W), matched by <see cref="RingTag"/>
/// so that pieces of concurrent operations may arrive in any order.
/// </summary>
public interface IRingTransport : IAsyncDisposable
{
    /// <summary>This worker's position in the ring, 0 .. <see cref="WorldSize"/> - 1.</summary>
    int Rank { get; }

    /// <summary>Number of workers in the ring (W).</summary>
    int WorldSize { get; }

    /// <summary>A human-readable name of a rank for error messages, e.g. "rank 2 (http://10.0.0.7:7001)".</summary>
    string DescribeRank(int rank) => $"rank {rank}";

    /// <summary>
    /// Sends a piece to the right-hand neighbour. The caller keeps ownership of the piece: when the returned task
    /// completes the transport no longer reads <see cref="RingPiece.Bytes"/>, so the caller may reuse that memory.
    /// Failures surface as <see cref="RingTransportException"/>.
    /// </summary>
    ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken);

    /// <summary>
    /// Receives the piece with this tag from the left-hand neighbour (waiting until it arrives). The caller owns the
    /// returned piece and must dispose it. Failures surface as <see cref="RingTransportException"/>.
    /// </summary>
    ValueTask<RingPiece> ReceiveAsync(RingTag tag, CancellationToken cancellationToken);

    /// <summary>
    /// Optional: takes where the pieces of one operation from the left-hand neighbour land (<see cref="RingLanding"/>),
    /// so that whichever thread receives one adds or copies it in place. Null when this transport cannot; the caller
    /// then receives with <see cref="ReceiveAsync"/>. The caller must dispose the zone before it lets go of the memory.
    /// </summary>
    RingLandingZone? Expect(IReadOnlyList<RingLanding> landings) => null;
}

/// <summary>What a message on a point-to-point link is (the frame says it, and a link accepts only its own kind).</summary>
public enum PeerMessageKind
{
    /// <summary>A piece of a ring all-reduce: operation, phase (0 reduce-scatter, 1 all-gather), ring step, piece.</summary>
    AllReduce = 0,

    /// <summary>A piece of a pipeline stage tensor: step, phase (0 activation, 1 activation gradient), micro-batch, piece; carries the tensor's shape.</summary>
    StageTensor = 1,
}

/// <summary>
/// Identifies one piece of a message. For <see cref="PeerMessageKind.AllReduce"/>: one piece of one collective
/// operation, phase 0 = reduce-scatter, 1 = all-gather. For <see cref="PeerMessageKind.StageTensor"/>: piece
/// <see cref="Piece"/> of the activation (phase 0) or activation gradient (phase 1) of training step
/// <see cref="Operation"/>, micro-batch <see cref="RingStep"/> (see <see cref="StageTag"/>).
/// </summary>
public readonly record struct RingTag(long Operation, int Phase, int RingStep, int Piece, PeerMessageKind Kind = PeerMessageKind.AllReduce)
{
    /// <summary>The tag of piece <paramref name="piece"/> of a stage tensor: phase 0 = activation, 1 = activation gradient.</summary>
    public static RingTag StageTag(long step, int phase, int microBatch, int piece) => new(step, phase, microBatch, piece, PeerMessageKind.StageTensor);

    /// <summary>"activation" or "gradient" for a stage tensor's phase.</summary>
    public static string StagePhaseName(int phase) => phase switch { 0 => "activation", 1 => "gradient", _ => $"phase {phase}" };

    /// <inheritdoc />
    public override string ToString() => Kind == PeerMessageKind.StageTensor
        ? $"{StagePhaseName(Phase)} of step {Operation} micro-batch {RingStep} piece {Piece}"
        : $"op {Operation} {RingAllReduce.PhaseName(Phase)} step {RingStep} piece {Piece}";
}

/// <summary>
/// A contiguous run of float32 values (little-endian bytes) travelling between neighbours, at element
/// <see cref="Offset"/> of the flattened buffer. A piece either borrows memory (nothing to release) or owns a pooled
/// buffer that <see cref="Dispose"/> returns.
/// </summary>
public sealed class RingPiece : IDisposable
{
    private IDisposable? _owner;

    static RingPiece()
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("the ring wire format is little-endian float32");
    }

    private RingPiece(RingTag tag, long offset, int pieces, ReadOnlyMemory<byte> bytes, IDisposable? owner)
    {
        if (bytes.Length % sizeof(float) != 0) throw new ArgumentException($"a piece holds whole float32 values, got {bytes.Length} bytes", nameof(bytes));
        Tag = tag;
        Offset = offset;
        Pieces = pieces;
        Bytes = bytes;
        _owner = owner;
    }

    /// <summary>A piece that borrows <paramref name="values"/> (no copy); the memory must stay valid and unchanged until the send completes.</summary>
    public static RingPiece Borrow(RingTag tag, long offset, int pieces, ReadOnlyMemory<float> values) =>
        new(tag, offset, pieces, values.IsEmpty ? ReadOnlyMemory<byte>.Empty : new FloatBytesMemory(MemoryMarshal.AsMemory(values)).Memory, null);

    /// <summary>A piece over raw little-endian float32 bytes; <paramref name="owner"/> (if any) is disposed with the piece.</summary>
    public static RingPiece FromBytes(RingTag tag, long offset, int pieces, ReadOnlyMemory<byte> bytes, IDisposable? owner = null) =>
        new(tag, offset, pieces, bytes, owner);

    /// <summary>A piece holding a private copy of <paramref name="bytes"/> in a pooled array.</summary>
    public static RingPiece CopyOf(RingTag tag, long offset, int pieces, ReadOnlySpan<byte> bytes)
    {
        var lease = new PooledBytes(bytes.Length);
        bytes.CopyTo(lease.Array);
        return new RingPiece(tag, offset, pieces, lease.Array.AsMemory(0, bytes.Length), lease);
    }

    /// <summary>Which operation / phase / step / piece this is.</summary>
    public RingTag Tag { get; }

    /// <summary>Element offset of the first value in the flattened buffer.</summary>
    public long Offset { get; }

    /// <summary>Number of pieces the chunk sent at this ring step (or the stage tensor) is split into.</summary>
    public int Pieces { get; }

    /// <summary>A stage tensor piece: the whole tensor's shape (every piece carries it); null for all-reduce pieces.</summary>
    public long[]? Shape { get; private set; }

    /// <summary>Sets the shape of the stage tensor this piece belongs to (1 to <see cref="PieceFrame.MaxDims"/> dimensions); returns the piece.</summary>
    public RingPiece WithShape(long[]? shape)
    {
        Shape = shape;
        return this;
    }

    /// <summary>The values as little-endian float32 bytes.</summary>
    public ReadOnlyMemory<byte> Bytes { get; }

    /// <summary>The values.</summary>
    public ReadOnlySpan<float> Values => MemoryMarshal.Cast<byte, float>(Bytes.Span);

    /// <summary>Number of values.</summary>
    public int Count => Bytes.Length / sizeof(float);

    /// <summary>Releases the pooled buffer, if the piece owns one. Idempotent.</summary>
    public void Dispose() => Interlocked.Exchange(ref _owner, null)?.Dispose();

    private sealed class PooledBytes(int length) : IDisposable
    {
        public byte[] Array { get; } = ArrayPool<byte>.Shared.Rent(length);

        public void Dispose() => ArrayPool<byte>.Shared.Return(Array);
    }

    /// <summary>Views float memory as bytes without copying (so gRPC can wrap it with UnsafeByteOperations).</summary>
    private sealed class FloatBytesMemory(Memory<float> floats) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => MemoryMarshal.AsBytes(floats.Span);

        public override MemoryHandle Pin(int elementIndex = 0)
        {
            if (elementIndex % sizeof(float) != 0) throw new NotSupportedException("can only pin float-aligned byte offsets");
            return floats[(elementIndex / sizeof(float))..].Pin();
        }

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}

/// <summary>A neighbour could not be reached, closed its stream, refused the ring, or sent something malformed.</summary>
public class RingTransportException(string message, int peerRank, string peer, Exception? inner = null)
    : IOException(message, inner)
{
    /// <summary>The rank of the neighbour involved (-1 if unknown).</summary>
    public int PeerRank { get; } = peerRank;

    /// <summary>The neighbour's description (rank and address).</summary>
    public string Peer { get; } = peer;
}
