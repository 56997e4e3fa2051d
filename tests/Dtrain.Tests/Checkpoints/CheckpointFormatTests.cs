using System.Buffers.Binary;
using Dtrain.Checkpoints;

namespace Dtrain.Tests.Checkpoints;

public class CheckpointFormatTests
{
    [Fact]
    public void Round_trip_preserves_step_created_at_and_every_section_byte()
    {
        var original = Samples.Checkpoint(step: 1234567, modelBytes: 3 << 20); // spans several write chunks
        var bytes = Samples.Serialize(original);

        var read = CheckpointFormat.Read(new MemoryStream(bytes), "mem.dtck");

        Samples.AssertSameCheckpoint(original, read);
    }

    [Fact]
    public void Checkpoint_without_sections_round_trips()
    {
        var original = new CheckpointData(0, new Dictionary<string, byte[]>(), DateTimeOffset.UnixEpoch);

        var read = CheckpointFormat.Read(new MemoryStream(Samples.Serialize(original)), "empty.dtck");

        Samples.AssertSameCheckpoint(original, read);
    }

    [Fact]
    public void File_starts_with_magic_and_version_and_ends_with_trailer()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(5));

        Assert.Equal("DTRAINCK"u8.ToArray(), bytes[..8]);
        Assert.Equal(CheckpointFormat.Version, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)));
        Assert.Equal("DTCKEND!"u8.ToArray(), bytes[^8..]);
    }

    [Fact]
    public void Non_seekable_stream_is_read_too()
    {
        var original = Samples.Checkpoint(9);
        var bytes = Samples.Serialize(original);

        var read = CheckpointFormat.Read(new NonSeekableStream(bytes), "pipe");

        Samples.AssertSameCheckpoint(original, read);
    }

    [Fact]
    public void A_flipped_bit_in_any_byte_of_the_file_is_detected()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(42, modelBytes: 700));

        for (int i = 0; i < bytes.Length; i++)
        {
            var damaged = (byte[])bytes.Clone();
            damaged[i] ^= 0x10;
            var ex = Assert.Throws<CorruptCheckpointException>(
                () => CheckpointFormat.Read(new MemoryStream(damaged), "flip.dtck"));
            Assert.Equal("flip.dtck", ex.Path);
            Assert.Contains("flip.dtck", ex.Message);
        }
    }

    [Fact]
    public void Bad_magic_is_reported_as_such()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(1));
        bytes[0] = (byte)'X';

        var ex = Assert.Throws<CorruptCheckpointException>(() => CheckpointFormat.Read(new MemoryStream(bytes), "x.dtck"));

        Assert.Contains("bad magic", ex.Reason);
    }

    [Fact]
    public void Unsupported_version_is_reported_with_the_version_number()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(1));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 7);

        var ex = Assert.Throws<CorruptCheckpointException>(() => CheckpointFormat.Read(new MemoryStream(bytes), "v.dtck"));

        Assert.Contains("unsupported format version 7", ex.Reason);
    }

    [Fact]
    public void Flipped_payload_byte_is_reported_as_checksum_mismatch()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(1));
        bytes[bytes.Length - CheckpointFormat.FooterSize - 100] ^= 0xFF;

        var ex = Assert.Throws<CorruptCheckpointException>(() => CheckpointFormat.Read(new MemoryStream(bytes), "c.dtck"));

        Assert.Contains("checksum mismatch", ex.Reason);
    }

    [Fact]
    public void Truncation_at_every_length_is_detected()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(3, modelBytes: 300));

        for (int length = 0; length < bytes.Length; length++)
        {
            var ex = Assert.Throws<CorruptCheckpointException>(
                () => CheckpointFormat.Read(new MemoryStream(bytes, 0, length), "t.dtck"));
            Assert.Contains("truncated", ex.Reason);
        }
    }

    [Theory]
    [InlineData(1L << 60)]
    [InlineData(long.MaxValue)]
    [InlineData(-1L)]
    [InlineData(int.MaxValue)]
    [InlineData(2000L)] // plausible, but more than the file holds
    public void Corrupted_length_field_is_detected_without_a_huge_allocation(long bogusLength)
    {
        var original = new CheckpointData(8, new Dictionary<string, byte[]> { ["model"] = new byte[1000] }, Samples.CreatedAt);
        var bytes = Samples.Serialize(original);
        // Single entry right after the fixed header: name length (1), "model" (5), then the int64 length.
        int lengthField = CheckpointFormat.FixedHeaderSize + 1 + 5;
        Assert.Equal(1000, BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(lengthField)));
        BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(lengthField), bogusLength);

        long before = GC.GetAllocatedBytesForCurrentThread();
        var ex = Assert.Throws<CorruptCheckpointException>(() => CheckpointFormat.Read(new MemoryStream(bytes), "len.dtck"));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Contains("length", ex.Reason);
        Assert.True(allocated < 1 << 20, $"allocated {allocated} bytes while rejecting a corrupt length");
    }

    [Fact]
    public void Corrupted_section_count_is_detected()
    {
        var bytes = Samples.Serialize(Samples.Checkpoint(2));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(CheckpointFormat.FixedHeaderSize - 4), uint.MaxValue);

        var ex = Assert.Throws<CorruptCheckpointException>(() => CheckpointFormat.Read(new MemoryStream(bytes), "n.dtck"));

        Assert.Contains("section count", ex.Reason);
    }

    [Theory]
    [InlineData("")]
    [InlineData("Model")]
    [InlineData("model weights")]
    [InlineData("model/weights")]
    [InlineData("modèle")]
    [InlineData("a234567890123456789012345678901234567890123456789012345678901234x")] // 65 chars
    public void Invalid_section_names_are_rejected(string name)
    {
        Assert.False(CheckpointData.IsValidSectionName(name));
        Assert.Throws<ArgumentException>(
            () => new CheckpointData(1, new Dictionary<string, byte[]> { [name] = [1] }, Samples.CreatedAt));
    }

    [Theory]
    [InlineData("m")]
    [InlineData("model")]
    [InlineData("tokenizer.json")]
    [InlineData("rng_state-0.v2")]
    [InlineData("a234567890123456789012345678901234567890123456789012345678901234")] // 64 chars
    public void Valid_section_names_are_accepted(string name)
    {
        Assert.True(CheckpointData.IsValidSectionName(name));
        var data = new CheckpointData(1, new Dictionary<string, byte[]> { [name] = [1] }, Samples.CreatedAt);
        Assert.True(data.Sections.ContainsKey(name));
    }

    [Fact]
    public void Negative_step_is_rejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(
            () => new CheckpointData(-1, new Dictionary<string, byte[]>(), Samples.CreatedAt));
    }

    private sealed class NonSeekableStream(byte[] bytes) : MemoryStream(bytes)
    {
        public override bool CanSeek => false;
    }
}
