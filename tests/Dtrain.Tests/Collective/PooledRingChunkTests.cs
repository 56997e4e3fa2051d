using System.Buffers;
using Dtrain.Collective;
using Dtrain.Protos.Collective;
using Google.Protobuf;

namespace Dtrain.Tests.Collective;

public class PooledRingChunkTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(4096)]
    public void Parse_reads_every_field_of_a_RingChunk_from_a_segmented_payload(int segmentBytes)
    {
        var data = Enumerable.Range(0, 1000).Select(i => (byte)(i * 7)).ToArray();
        var message = new RingChunk
        {
            JobId = "jöb-1",
            Generation = 1L << 40,
            SenderRank = 3,
            Operation = -5,
            Phase = 1,
            RingStep = 2,
            Piece = 6,
            Pieces = 9,
            Offset = 123_456_789_012,
            Data = ByteString.CopyFrom(data),
        };
        using var chunk = PooledRingChunk.Parse(Segmented(message.ToByteArray(), segmentBytes));
        Assert.Equal(("jöb-1", 1L << 40, 3, -5L, 1, 2, 6, 9, 123_456_789_012L),
            (chunk.JobId, chunk.Generation, chunk.SenderRank, chunk.Operation, chunk.Phase, chunk.RingStep, chunk.Piece, chunk.Pieces, chunk.Offset));
        Assert.Equal(data, chunk.Data.ToArray());
    }

    [Fact]
    public void Parse_of_an_empty_message_gives_defaults_and_no_data()
    {
        using var chunk = PooledRingChunk.Parse(ReadOnlySequence<byte>.Empty);
        Assert.Equal("", chunk.JobId);
        Assert.True(chunk.Data.IsEmpty);
    }

    [Fact]
    public void Parse_rejects_a_truncated_message()
    {
        var bytes = new RingChunk { JobId = "j", Data = ByteString.CopyFrom(new byte[64]) }.ToByteArray();
        Assert.Throws<InvalidDataException>(() => PooledRingChunk.Parse(new ReadOnlySequence<byte>(bytes, 0, bytes.Length - 1)));
    }

    private static ReadOnlySequence<byte> Segmented(byte[] bytes, int segmentBytes)
    {
        Segment? first = null, last = null;
        for (var start = 0; start < bytes.Length; start += segmentBytes)
        {
            var memory = bytes.AsMemory(start, Math.Min(segmentBytes, bytes.Length - start));
            if (first is null) first = last = new Segment(memory, 0);
            else last = last!.Append(memory);
        }
        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
