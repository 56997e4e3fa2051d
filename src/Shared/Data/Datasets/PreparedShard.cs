using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;

namespace Dtrain.Data.Datasets;

/// <summary>
/// One shard of an opened dataset, memory-mapped read-only: its ids (and, for classification, records and labels) are
/// read from the page cache on demand, never loaded whole.
/// </summary>
public sealed unsafe class PreparedShard : IDisposable
{
    readonly Mapping tokens;
    readonly Mapping? offsets, labels;
    readonly int width;

    internal PreparedShard(string directory, DatasetShard entry, int width) : this(entry, width, name => Path.Combine(directory, name))
    {
    }

    /// <summary>The shard whose files are at <paramref name="pathOf"/>(name): their sizes must already have been checked.</summary>
    internal PreparedShard(DatasetShard entry, int width, Func<string, string> pathOf)
    {
        Entry = entry;
        this.width = width;
        tokens = new Mapping(pathOf(entry.Tokens.Name), entry.Tokens.Bytes);
        try
        {
            if (entry.Offsets is { } o) offsets = new Mapping(pathOf(o.Name), o.Bytes);
            if (entry.Labels is { } l) labels = new Mapping(pathOf(l.Name), l.Bytes);
        }
        catch
        {
            tokens.Dispose();
            offsets?.Dispose();
            throw;
        }
    }

    public DatasetShard Entry { get; }
    public long TokenCount => Entry.TokenCount;
    public long Records => Entry.Records;

    /// <summary>The id at <paramref name="index"/> of this shard.</summary>
    public int this[long index]
    {
        get
        {
            if ((ulong)index >= (ulong)TokenCount) throw new ArgumentOutOfRangeException(nameof(index), index, $"outside the shard's {TokenCount} tokens");
            return width == 2 ? BinaryPrimitives.ReadUInt16LittleEndian(new ReadOnlySpan<byte>(tokens.Pointer + index * 2, 2))
                : BinaryPrimitives.ReadInt32LittleEndian(new ReadOnlySpan<byte>(tokens.Pointer + index * 4, 4));
        }
    }

    /// <summary>Copies ids [<paramref name="start"/>, start + destination.Length) into <paramref name="destination"/>.</summary>
    public void Read(long start, Span<int> destination)
    {
        if (start < 0 || start + destination.Length > TokenCount)
            throw new ArgumentOutOfRangeException(nameof(start), start, $"[{start}, {start + destination.Length}) is outside the shard's {TokenCount} tokens");
        if (destination.IsEmpty) return;
        if (width == 2)
        {
            var source = new ReadOnlySpan<ushort>(tokens.Pointer + start * 2, destination.Length);
            for (var i = 0; i < source.Length; i++) destination[i] = BitConverter.IsLittleEndian ? source[i] : BinaryPrimitives.ReverseEndianness(source[i]);
        }
        else
        {
            var source = new ReadOnlySpan<int>(tokens.Pointer + start * 4, destination.Length);
            source.CopyTo(destination);
            if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(destination, destination);
        }
    }

    /// <summary>Classification: record <paramref name="index"/>'s ids and label id.</summary>
    public (int[] Ids, int Label) Record(long index)
    {
        if (offsets is null || labels is null) throw new InvalidOperationException("a language model's shard has no records");
        if ((ulong)index >= (ulong)Records) throw new ArgumentOutOfRangeException(nameof(index), index, $"outside the shard's {Records} records");
        var start = (long)Offset(index);
        var end = (long)Offset(index + 1);
        var ids = new int[end - start];
        Read(start, ids);
        return (ids, BinaryPrimitives.ReadInt32LittleEndian(new ReadOnlySpan<byte>(labels.Pointer + index * 4, 4)));
    }

    internal ulong Offset(long index) => BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(offsets!.Pointer + index * 8, 8));

    internal int Label(long index) => BinaryPrimitives.ReadInt32LittleEndian(new ReadOnlySpan<byte>(labels!.Pointer + index * 4, 4));

    internal ReadOnlySpan<byte> TokenBytes => new(tokens.Pointer, checked((int)Math.Min(int.MaxValue, tokens.Length)));

    public void Dispose()
    {
        tokens.Dispose();
        offsets?.Dispose();
        labels?.Dispose();
    }

    /// <summary>A read-only mapping of a whole file (none for an empty one).</summary>
    sealed class Mapping : IDisposable
    {
        readonly MemoryMappedFile? file;
        readonly MemoryMappedViewAccessor? view;

        public Mapping(string path, long length)
        {
            Length = length;
            if (length == 0) return;
            file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = file.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            Pointer = p + view.PointerOffset;
        }

        public byte* Pointer { get; }
        public long Length { get; }

        public void Dispose()
        {
            if (view is null) return;
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            file!.Dispose();
        }
    }
}
