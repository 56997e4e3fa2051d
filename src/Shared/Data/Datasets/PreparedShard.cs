using System.Buffers;
using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Dtrain.Data.Datasets;

/// <summary>
/// One shard of an opened dataset, memory-mapped read-only (its ids, and for classification its records and labels, read
/// from the page cache on demand, never loaded whole), or read by ranges from object storage: each read fetches only
/// the bytes it touches (through the store's block cache), so opening a remote shard downloads nothing.
/// </summary>
public sealed unsafe class PreparedShard : IDisposable
{
    readonly Source tokens;
    readonly Source? offsets, labels;
    readonly int width;

    internal PreparedShard(string directory, DatasetShard entry, int width) : this(entry, width, name => Path.Combine(directory, name))
    {
    }

    /// <summary>
    /// The shard whose files are at <paramref name="pathOf"/>(name): their sizes must already have been checked. With
    /// <paramref name="touchedOf"/>, each read of a file reports the byte range it touches ([offset, offset + length))
    /// to the action given for that file (none: not reported), before it returns.
    /// </summary>
    internal PreparedShard(DatasetShard entry, int width, Func<string, string> pathOf, Func<DatasetFile, Action<long, long>?>? touchedOf = null)
    {
        Entry = entry;
        this.width = width;
        tokens = new Mapping(pathOf(entry.Tokens.Name), entry.Tokens.Bytes, touchedOf?.Invoke(entry.Tokens));
        try
        {
            if (entry.Offsets is { } o) offsets = new Mapping(pathOf(o.Name), o.Bytes, touchedOf?.Invoke(o));
            if (entry.Labels is { } l) labels = new Mapping(pathOf(l.Name), l.Bytes, touchedOf?.Invoke(l));
        }
        catch
        {
            tokens.Dispose();
            offsets?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The shard whose files are read by ranges: <paramref name="readerOf"/>(file) fills a buffer with the file's bytes
    /// from an offset (blocking until they are there; its failures are the reads'). Their sizes must already have been checked.
    /// </summary>
    internal PreparedShard(DatasetShard entry, int width, Func<DatasetFile, Action<long, Memory<byte>>> readerOf)
    {
        Entry = entry;
        this.width = width;
        tokens = new Ranged(readerOf(entry.Tokens), entry.Tokens.Bytes);
        if (entry.Offsets is { } o) offsets = new Ranged(readerOf(o), o.Bytes);
        if (entry.Labels is { } l) labels = new Ranged(readerOf(l), l.Bytes);
    }

    /// <summary>Whether its files are read by ranges from object storage (else memory-mapped).</summary>
    public bool Remote => tokens is Ranged;

    public DatasetShard Entry { get; }
    public long TokenCount => Entry.TokenCount;
    public long Records => Entry.Records;

    /// <summary>The id at <paramref name="index"/> of this shard.</summary>
    public int this[long index]
    {
        get
        {
            if ((ulong)index >= (ulong)TokenCount) throw new ArgumentOutOfRangeException(nameof(index), index, $"outside the shard's {TokenCount} tokens");
            Span<byte> id = stackalloc byte[4];
            tokens.Read(index * width, id[..width]);
            return width switch { 1 => id[0], 2 => BinaryPrimitives.ReadUInt16LittleEndian(id), _ => BinaryPrimitives.ReadInt32LittleEndian(id) };
        }
    }

    /// <summary>Copies ids [<paramref name="start"/>, start + destination.Length) into <paramref name="destination"/>.</summary>
    public void Read(long start, Span<int> destination)
    {
        if (start < 0 || start + destination.Length > TokenCount)
            throw new ArgumentOutOfRangeException(nameof(start), start, $"[{start}, {start + destination.Length}) is outside the shard's {TokenCount} tokens");
        if (destination.IsEmpty) return;
        if (tokens is not Mapping mapped)
        {
            var bytes = checked(destination.Length * width);
            var buffer = ArrayPool<byte>.Shared.Rent(bytes);
            try
            {
                tokens.Read(start * width, buffer.AsSpan(0, bytes));
                Widen(buffer.AsSpan(0, bytes), destination, width);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
            return;
        }
        mapped.Touched?.Invoke(start * width, (long)destination.Length * width);
        Widen(new ReadOnlySpan<byte>(mapped.Pointer + start * width, checked(destination.Length * width)), destination, width);
    }

    /// <summary>
    /// Ids as a shard holds them (<paramref name="width"/> bytes each, little-endian) into <paramref name="destination"/>
    /// (as long as the ids): 1- and 2-byte ids widened by <see cref="System.Numerics.Tensors.TensorPrimitives"/> (vectorized;
    /// as fast as a hand-written <see cref="Vector"/> loop or faster, docs/benchmarks.md).
    /// </summary>
    internal static void Widen(ReadOnlySpan<byte> bytes, Span<int> destination, int width)
    {
        if (bytes.Length != destination.Length * width) throw new ArgumentException($"{bytes.Length} bytes are not {destination.Length} ids of {width} bytes", nameof(bytes));
        if (width == 1) System.Numerics.Tensors.TensorPrimitives.ConvertTruncating<byte, int>(bytes, destination);
        else if (width == 2)
        {
            var ids = MemoryMarshal.Cast<byte, ushort>(bytes);
            if (BitConverter.IsLittleEndian) System.Numerics.Tensors.TensorPrimitives.ConvertTruncating<ushort, int>(ids, destination);
            else for (var i = 0; i < ids.Length; i++) destination[i] = BinaryPrimitives.ReverseEndianness(ids[i]);
        }
        else if (width == 4)
        {
            MemoryMarshal.Cast<byte, int>(bytes).CopyTo(destination);
            if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(destination, destination);
        }
        else throw new ArgumentOutOfRangeException(nameof(width), width, "1, 2 or 4");
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
        return (ids, Label(index));
    }

    internal ulong Offset(long index)
    {
        Span<byte> bytes = stackalloc byte[8];
        offsets!.Read(index * 8, bytes);
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    internal int Label(long index)
    {
        Span<byte> bytes = stackalloc byte[4];
        labels!.Read(index * 4, bytes);
        return BinaryPrimitives.ReadInt32LittleEndian(bytes);
    }

    internal ReadOnlySpan<byte> TokenBytes => tokens is Mapping m ? m.Touch(new(m.Pointer, checked((int)Math.Min(int.MaxValue, m.Length))))
        : throw new NotSupportedException("a shard read by ranges has no mapped bytes");

    public void Dispose()
    {
        tokens.Dispose();
        offsets?.Dispose();
        labels?.Dispose();
    }

    /// <summary>The bytes of one of the shard's files.</summary>
    abstract class Source : IDisposable
    {
        /// <summary>Fills <paramref name="destination"/> with the bytes from <paramref name="offset"/> on (within the file: the callers check).</summary>
        public abstract void Read(long offset, Span<byte> destination);

        public virtual void Dispose()
        {
        }
    }

    /// <summary>A file read by ranges (object storage): each read fetches only the bytes it asks for, through a buffer held for the read only.</summary>
    sealed class Ranged(Action<long, Memory<byte>> read, long length) : Source
    {
        public override void Read(long offset, Span<byte> destination)
        {
            if (destination.IsEmpty) return;
            if (offset < 0 || offset + destination.Length > length)
                throw new ArgumentOutOfRangeException(nameof(offset), offset, $"[{offset}, {offset + destination.Length}) is outside the file's {length} bytes");
            var buffer = ArrayPool<byte>.Shared.Rent(destination.Length);
            try
            {
                read(offset, buffer.AsMemory(0, destination.Length));
                buffer.AsSpan(0, destination.Length).CopyTo(destination);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    /// <summary>A read-only mapping of a whole file (none for an empty one).</summary>
    sealed class Mapping : Source
    {
        readonly MemoryMappedFile? file;
        readonly MemoryMappedViewAccessor? view;

        public Mapping(string path, long length, Action<long, long>? touched)
        {
            Length = length;
            Touched = touched;
            if (length == 0) return;
            file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = file.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            Pointer = p + view.PointerOffset;
        }

        public byte* Pointer { get; }
        public long Length { get; }
        /// <summary>Told the byte range each read touches (the blocks a job reads are checked), or null.</summary>
        public Action<long, long>? Touched { get; }

        public ReadOnlySpan<byte> Touch(ReadOnlySpan<byte> bytes)
        {
            Touched?.Invoke(0, bytes.Length);
            return bytes;
        }

        public override void Read(long offset, Span<byte> destination)
        {
            Touched?.Invoke(offset, destination.Length);
            new ReadOnlySpan<byte>(Pointer + offset, destination.Length).CopyTo(destination);
        }

        public override void Dispose()
        {
            if (view is null) return;
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            file!.Dispose();
        }
    }
}
