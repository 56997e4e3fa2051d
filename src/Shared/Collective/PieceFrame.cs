using System.Buffers.Binary;

namespace Dtrain.Collective;

/// <summary>
/// The frame every non-gRPC link writes before a piece's bytes (little-endian, 72 bytes): operation (8), phase (4),
/// ring step (4), piece (4), pieces (4), offset (8), byte length (4), message kind (4), then up to four int64
/// dimensions (32) — the tensor's shape for a <see cref="PeerMessageKind.Tensor"/> piece, zeros for an
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
        if (rawKind is not ((int)PeerMessageKind.AllReduce or (int)PeerMessageKind.Tensor))
            throw new InvalidDataException($"message kind {rawKind} is neither 0 (all-reduce piece) nor 1 (stage tensor)");
        var tag = new RingTag(
            BinaryPrimitives.ReadInt64LittleEndian(header),
            BinaryPrimitives.ReadInt32LittleEndian(header[8..]),
            BinaryPrimitives.ReadInt32LittleEndian(header[12..]),
            BinaryPrimitives.ReadInt32LittleEndian(header[16..]),
            (PeerMessageKind)rawKind);
        if (tag.Kind != kind)
            throw new InvalidDataException($"{(tag.Kind == PeerMessageKind.Tensor ? "a stage tensor" : "an all-reduce piece")} on a link that carries {Describe(kind)}s only");
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

    private static string Describe(PeerMessageKind kind) => kind == PeerMessageKind.Tensor ? "stage tensor" : "all-reduce piece";
}
