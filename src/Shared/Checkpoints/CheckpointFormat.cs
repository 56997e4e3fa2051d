using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Dtrain.Checkpoints;

/// <summary>
/// The binary checkpoint file format (version 1). All integers are little-endian.
/// <code>
/// offset  size  field
/// 0       8     magic "DTRAINCK" (ASCII)
/// 8       4     format version, uint32 (= 1)
/// 12      8     step, int64 (&gt;= 0)
/// 20      8     created-at, UTC ticks, int64
/// 28      2     created-at UTC offset in minutes, int16 (-840..840)
/// 30      4     section count N, uint32 (0..4096)
/// 34      ...   N section entries, names strictly ascending (ordinal):
///                 name length, uint8 (1..64)
///                 name, ASCII [a-z0-9._-]
///                 payload length, int64 (0..Array.MaxLength)
/// ...     ...   the N payloads, concatenated in entry order
/// L-40    32    SHA-256 of bytes [0, L-40)
/// L-8     8     trailer "DTCKEND!" (ASCII)
/// </code>
/// <para>
/// <see cref="Read"/> checks, in order: magic, version, the trailer (so a torn or truncated write is reported
/// as such before anything is hashed), the header with every length bounded by the stream length (a corrupted
/// length field can never cause a large allocation), that the payload lengths add up to exactly the file size,
/// and finally the SHA-256. Any failure is a <see cref="CorruptCheckpointException"/>.
/// </para>
/// </summary>
public static class CheckpointFormat
{
    /// <summary>Current (and only) format version.</summary>
    public const uint Version = 1;

    /// <summary>Size of the fixed header: magic, version, step, created-at ticks and offset, section count.</summary>
    public const int FixedHeaderSize = 8 + 4 + 8 + 8 + 2 + 4;

    /// <summary>Size of the SHA-256 plus the trailer magic.</summary>
    public const int FooterSize = HashSize + 8;

    /// <summary>Smallest possible file: fixed header and footer, no sections.</summary>
    public const int MinFileSize = FixedHeaderSize + FooterSize;

    private const int HashSize = 32;
    private const int MinEntrySize = 1 + 1 + 8;
    private const int ChunkSize = 1 << 20;
    private const int MaxOffsetMinutes = 14 * 60;

    private static ReadOnlySpan<byte> Magic => "DTRAINCK"u8;
    private static ReadOnlySpan<byte> TrailerMagic => "DTCKEND!"u8;

    /// <summary>Writes <paramref name="data"/> to <paramref name="stream"/> (does not flush or close it).</summary>
    /// <param name="bytesWritten">Called with the running total of bytes written, at least once per 1 MiB.</param>
    public static void Write(Stream stream, CheckpointData data, Action<long>? bytesWritten = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(data);

        var names = data.Sections.Keys.ToArray();
        Array.Sort(names, StringComparer.Ordinal);

        var header = new MemoryStream();
        Span<byte> buf = stackalloc byte[8];
        header.Write(Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(buf, Version);
        header.Write(buf[..4]);
        BinaryPrimitives.WriteInt64LittleEndian(buf, data.Step);
        header.Write(buf);
        BinaryPrimitives.WriteInt64LittleEndian(buf, data.CreatedAt.UtcTicks);
        header.Write(buf);
        BinaryPrimitives.WriteInt16LittleEndian(buf, checked((short)data.CreatedAt.TotalOffsetMinutes));
        header.Write(buf[..2]);
        BinaryPrimitives.WriteUInt32LittleEndian(buf, (uint)names.Length);
        header.Write(buf[..4]);
        foreach (var name in names)
        {
            header.WriteByte((byte)name.Length);
            header.Write(Encoding.ASCII.GetBytes(name));
            BinaryPrimitives.WriteInt64LittleEndian(buf, data.Sections[name].LongLength);
            header.Write(buf);
        }

        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long written = 0;
        void Emit(ReadOnlySpan<byte> bytes)
        {
            hash.AppendData(bytes);
            stream.Write(bytes);
            written += bytes.Length;
            bytesWritten?.Invoke(written);
        }

        Emit(header.GetBuffer().AsSpan(0, (int)header.Length));
        foreach (var name in names)
        {
            var payload = data.Sections[name];
            for (int offset = 0; offset < payload.Length; offset += ChunkSize)
                Emit(payload.AsSpan(offset, Math.Min(ChunkSize, payload.Length - offset)));
        }

        Span<byte> digest = stackalloc byte[HashSize];
        hash.GetHashAndReset(digest);
        stream.Write(digest);
        stream.Write(TrailerMagic);
        written += FooterSize;
        bytesWritten?.Invoke(written);
    }

    /// <summary>
    /// Reads and fully validates one checkpoint from the current position of <paramref name="stream"/> to its end.
    /// A stream that cannot seek is first copied to memory.
    /// </summary>
    /// <param name="fileNameForErrors">Named in every <see cref="CorruptCheckpointException"/>.</param>
    /// <exception cref="CorruptCheckpointException">The contents are not a valid checkpoint.</exception>
    public static CheckpointData Read(Stream stream, string fileNameForErrors)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(fileNameForErrors);
        if (!stream.CanRead)
            throw new ArgumentException("stream is not readable", nameof(stream));
        if (!stream.CanSeek)
        {
            var copy = new MemoryStream();
            stream.CopyTo(copy);
            copy.Position = 0;
            return Read(copy, fileNameForErrors);
        }

        try
        {
            return new Reader(stream, fileNameForErrors).Read();
        }
        catch (EndOfStreamException)
        {
            // Only possible when the stream shrinks while being read: all lengths are checked up front.
            throw new CorruptCheckpointException(fileNameForErrors, "truncated: unexpected end of file while reading");
        }
    }

    private sealed class Reader(Stream stream, string file)
    {
        private readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private readonly long start = stream.Position;
        private readonly long length = stream.Length - stream.Position;

        private CorruptCheckpointException Corrupt(string reason) => new(file, reason);

        public CheckpointData Read()
        {
            using var _ = this.hash;
            if (this.length == 0)
                throw Corrupt("truncated: the file is empty");
            if (this.length < Magic.Length)
                throw Corrupt($"truncated: only {this.length} bytes, not even the 8-byte magic");

            Span<byte> buf = stackalloc byte[8];
            ReadHashed(buf);
            if (!buf.SequenceEqual(Magic))
                throw Corrupt("bad magic: not a dtrain checkpoint (expected \"DTRAINCK\")");

            if (this.length < Magic.Length + 4)
                throw Corrupt($"truncated: only {this.length} bytes, header incomplete");
            ReadHashed(buf[..4]);
            uint version = BinaryPrimitives.ReadUInt32LittleEndian(buf);
            if (version != Version)
                throw Corrupt($"unsupported format version {version} (this build reads version {Version})");

            if (this.length < MinFileSize)
                throw Corrupt($"truncated: only {this.length} bytes, a checkpoint is at least {MinFileSize}");

            // Trailer first: a torn write is reported as truncated before anything is hashed.
            stream.Position = start + this.length - TrailerMagic.Length;
            stream.ReadExactly(buf);
            if (!buf.SequenceEqual(TrailerMagic))
                throw Corrupt($"truncated or incomplete write: end marker missing ({this.length} bytes)");
            stream.Position = start + Magic.Length + 4;

            ReadHashed(buf);
            long step = BinaryPrimitives.ReadInt64LittleEndian(buf);
            if (step < 0)
                throw Corrupt($"invalid step {step}");

            ReadHashed(buf);
            long utcTicks = BinaryPrimitives.ReadInt64LittleEndian(buf);
            ReadHashed(buf[..2]);
            short offsetMinutes = BinaryPrimitives.ReadInt16LittleEndian(buf);
            if (utcTicks < DateTime.MinValue.Ticks || utcTicks > DateTime.MaxValue.Ticks
                || offsetMinutes < -MaxOffsetMinutes || offsetMinutes > MaxOffsetMinutes)
            {
                throw Corrupt("invalid created-at timestamp");
            }
            var offset = TimeSpan.FromMinutes(offsetMinutes);
            long localTicks = utcTicks + offset.Ticks;
            if (localTicks < DateTime.MinValue.Ticks || localTicks > DateTime.MaxValue.Ticks)
                throw Corrupt("invalid created-at timestamp");
            var createdAt = new DateTimeOffset(localTicks, offset);

            ReadHashed(buf[..4]);
            uint count = BinaryPrimitives.ReadUInt32LittleEndian(buf);
            long room = this.length - MinFileSize;
            if (count > CheckpointData.MaxSections || count * (long)MinEntrySize > room)
                throw Corrupt($"invalid section count {count} for a file of {this.length} bytes");

            var names = new string[count];
            var lengths = new long[count];
            long declared = 0;
            Span<byte> nameBuf = stackalloc byte[CheckpointData.MaxSectionNameLength];
            for (int i = 0; i < count; i++)
            {
                ReadHashed(buf[..1]);
                int nameLength = buf[0];
                if (nameLength is 0 or > CheckpointData.MaxSectionNameLength)
                    throw Corrupt($"section #{i}: invalid name length {nameLength}");
                ReadHashed(nameBuf[..nameLength]);
                string name = Encoding.ASCII.GetString(nameBuf[..nameLength]);
                if (!CheckpointData.IsValidSectionName(name))
                    throw Corrupt($"section #{i}: invalid name");
                if (i > 0 && string.CompareOrdinal(names[i - 1], name) >= 0)
                    throw Corrupt($"section #{i} '{name}': names are duplicated or out of order");
                names[i] = name;

                ReadHashed(buf);
                long length = BinaryPrimitives.ReadInt64LittleEndian(buf);
                long remaining = this.length - (stream.Position - start) - FooterSize - declared;
                if (length < 0 || length > Array.MaxLength || length > remaining)
                {
                    throw Corrupt(
                        $"section '{name}': length {length} is impossible ({Math.Max(remaining, 0)} bytes left in the file)");
                }
                lengths[i] = length;
                declared += length;
            }

            long payloadBytes = this.length - (stream.Position - start) - FooterSize;
            if (declared != payloadBytes)
            {
                throw Corrupt(
                    $"section lengths add up to {declared} bytes but the file holds {payloadBytes} payload bytes");
            }

            var sections = new Dictionary<string, byte[]>((int)count, StringComparer.Ordinal);
            for (int i = 0; i < count; i++)
            {
                var payload = GC.AllocateUninitializedArray<byte>((int)lengths[i]);
                for (int offsetInSection = 0; offsetInSection < payload.Length; offsetInSection += ChunkSize)
                    ReadHashed(payload.AsSpan(offsetInSection, Math.Min(ChunkSize, payload.Length - offsetInSection)));
                sections.Add(names[i], payload);
            }

            Span<byte> expected = stackalloc byte[HashSize];
            Span<byte> actual = stackalloc byte[HashSize];
            stream.ReadExactly(expected);
            this.hash.GetHashAndReset(actual);
            if (!expected.SequenceEqual(actual))
                throw Corrupt("checksum mismatch: SHA-256 of the contents does not match the stored value");

            return new CheckpointData(step, sections, createdAt);
        }

        private void ReadHashed(Span<byte> destination)
        {
            stream.ReadExactly(destination);
            this.hash.AppendData(destination);
        }
    }
}
