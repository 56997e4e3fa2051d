using System.Buffers;
using System.Text;

namespace Dtrain.Collective;

/// <summary>
/// A received <c>RingChunk</c> whose data lives in a buffer rented from <see cref="ArrayPool{T}.Shared"/>
/// (server side only). Disposing it returns the buffer.
/// </summary>
public sealed class PooledRingChunk : IDisposable
{
    private const int MaxJobIdBytes = 4096;
    private byte[]? data;
    private int length;

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
    public ReadOnlyMemory<byte> Data => this.data is null ? ReadOnlyMemory<byte>.Empty : this.data.AsMemory(0, this.length);

    public void Dispose()
    {
        var data = Interlocked.Exchange(ref this.data, null);
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
                        chunk.data = ArrayPool<byte>.Shared.Rent(length);
                        chunk.length = length;
                        reader.UnreadSequence.Slice(0, length).CopyTo(chunk.data);
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
