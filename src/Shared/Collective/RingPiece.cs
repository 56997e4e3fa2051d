using System.Buffers;
using System.Runtime.InteropServices;

namespace Dtrain.Collective;

/// <summary>
/// A contiguous run of float32 values (little-endian bytes) travelling between neighbours, at element
/// <see cref="Offset"/> of the flattened buffer. A piece either borrows memory (nothing to release) or owns a pooled
/// buffer that <see cref="Dispose"/> returns.
/// </summary>
public sealed class RingPiece : IDisposable
{
    private IDisposable? owner;

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
        this.owner = owner;
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
    public void Dispose() => Interlocked.Exchange(ref this.owner, null)?.Dispose();

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
