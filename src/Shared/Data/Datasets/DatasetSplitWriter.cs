using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Microsoft.Win32.SafeHandles;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Writes one split's shards into a dataset's (temporary) directory: ids narrowed to the dataset's width, little-endian,
/// a new shard when the current one would pass the shard size; for classification, each record whole in one shard
/// with its offset and label. Each file is hashed as it is written — whole, and by blocks of <c>blockBytes</c>
/// (format version 2: <see cref="DatasetFile.BlockSha256"/>), with no second read — and fsynced when its shard is closed.
/// </summary>
public sealed class DatasetSplitWriter : IDisposable
{
    readonly string directory;
    readonly string split;
    readonly int width;
    readonly bool records;
    readonly long shardTokens;
    readonly int blockBytes;
    readonly List<DatasetShard> shards = [];
    byte[] scratch = ArrayPool<byte>.Shared.Rent(1 << 16);
    ShardFile? tokens, offsets, labels;
    long shardTokenCount, shardRecords, totalTokens, totalRecords;

    /// <param name="width">Bytes per id: 1, 2 or 4.</param>
    /// <param name="records">Classification: records with offsets and labels.</param>
    /// <param name="blockBytes">The block size of the files' block hashes (<see cref="DatasetLayout.BlockBytes"/>).</param>
    public DatasetSplitWriter(string directory, string split, int width, bool records, long shardTokens, int blockBytes = DatasetLayout.BlockBytes)
    {
        if (width is not (1 or 2 or 4)) throw new ArgumentOutOfRangeException(nameof(width), width, "1, 2 or 4");
        ArgumentOutOfRangeException.ThrowIfLessThan(shardTokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockBytes, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(blockBytes, DatasetLayout.MaxBlockBytes);
        this.directory = directory;
        this.blockBytes = blockBytes;
        this.split = split;
        this.width = width;
        this.records = records;
        this.shardTokens = shardTokens;
    }

    public long Tokens => totalTokens;

    /// <summary>Bytes per id: 1, 2 or 4.</summary>
    public int Width => width;

    /// <summary>
    /// Language model: appends ids already narrowed by <see cref="Narrow"/> (on a tokenizing thread, off the thread that
    /// writes) to the split's stream (a shard boundary may fall anywhere).
    /// </summary>
    public void AppendNarrowed(ReadOnlySpan<byte> ids)
    {
        if (records) throw new InvalidOperationException("a classification split takes whole records");
        if (ids.Length % width != 0) throw new ArgumentException($"{ids.Length} bytes are not whole ids of {width} bytes", nameof(ids));
        while (!ids.IsEmpty)
        {
            if (tokens is null || shardTokenCount == shardTokens) Open();
            var n = (int)Math.Min(ids.Length / width, shardTokens - shardTokenCount);
            tokens!.Write(ids[..(n * width)]);
            shardTokenCount += n;
            totalTokens += n;
            ids = ids[(n * width)..];
        }
    }

    /// <summary>Ids as a shard holds them: <paramref name="width"/> (1, 2 or 4) bytes each, little-endian, into <paramref name="bytes"/> (at least <c>ids.Length × width</c> long).</summary>
    public static void Narrow(ReadOnlySpan<int> ids, Span<byte> bytes, int width)
    {
        bytes = bytes[..(ids.Length * width)];
        if (width == 1)
        {
            // Truncating, a vector at a time (the callers' ids are below the vocabulary: at most 256).
            var i = 0;
            if (System.Numerics.Vector.IsHardwareAccelerated)
            {
                var wide = MemoryMarshal.Cast<int, uint>(ids);
                var n = System.Numerics.Vector<uint>.Count;
                for (; i <= wide.Length - 4 * n; i += 4 * n)
                {
                    var low = System.Numerics.Vector.Narrow(new System.Numerics.Vector<uint>(wide[i..]), new System.Numerics.Vector<uint>(wide[(i + n)..]));
                    var high = System.Numerics.Vector.Narrow(new System.Numerics.Vector<uint>(wide[(i + 2 * n)..]), new System.Numerics.Vector<uint>(wide[(i + 3 * n)..]));
                    System.Numerics.Vector.Narrow(low, high).CopyTo(bytes[i..]);
                }
            }
            for (; i < ids.Length; i++) bytes[i] = (byte)ids[i];
        }
        else if (width == 2)
        {
            var narrow = MemoryMarshal.Cast<byte, ushort>(bytes);
            System.Numerics.Tensors.TensorPrimitives.ConvertTruncating<int, ushort>(ids, narrow);
            if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(narrow, narrow);
        }
        else if (width == 4)
        {
            var wide = MemoryMarshal.Cast<byte, int>(bytes);
            ids.CopyTo(wide);
            if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(wide, wide);
        }
        else throw new ArgumentOutOfRangeException(nameof(width), width, "1, 2 or 4");
    }

    /// <summary>Classification: appends one record (never split between shards) with its label id.</summary>
    public void AppendRecord(ReadOnlySpan<int> ids, int label)
    {
        if (!records) throw new InvalidOperationException("a language model's split takes a token stream");
        if (tokens is null || (shardTokenCount > 0 && shardTokenCount + ids.Length > shardTokens)) Open();
        WriteIds(ids);
        Span<byte> eight = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(eight, (ulong)shardTokenCount);
        offsets!.Write(eight);
        BinaryPrimitives.WriteInt32LittleEndian(eight, label);
        labels!.Write(eight[..4]);
        shardRecords++;
        totalRecords++;
    }

    void WriteIds(ReadOnlySpan<int> ids)
    {
        var need = ids.Length * width;
        if (scratch.Length < need)
        {
            ArrayPool<byte>.Shared.Return(scratch);
            scratch = ArrayPool<byte>.Shared.Rent(need);
        }
        var bytes = scratch.AsSpan(0, need);
        Narrow(ids, bytes, width);
        tokens!.Write(bytes);
        shardTokenCount += ids.Length;
        totalTokens += ids.Length;
    }

    void Open()
    {
        Close();
        var index = shards.Count;
        tokens = new ShardFile(directory, DatasetLayout.ShardName(split, index, "tokens"), blockBytes);
        if (records)
        {
            offsets = new ShardFile(directory, DatasetLayout.ShardName(split, index, "offsets"), blockBytes);
            labels = new ShardFile(directory, DatasetLayout.ShardName(split, index, "labels"), blockBytes);
            offsets.Write(stackalloc byte[8]); // offset 0
        }
        shardTokenCount = 0;
        shardRecords = 0;
    }

    void Close()
    {
        if (tokens is null) return;
        shards.Add(new DatasetShard
        {
            Tokens = tokens.Finish(),
            TokenCount = shardTokenCount,
            Records = shardRecords,
            Offsets = offsets?.Finish(),
            Labels = labels?.Finish(),
        });
        tokens = offsets = labels = null;
    }

    /// <summary>Closes the last shard (fsynced) and describes the split.</summary>
    public DatasetSplit Finish()
    {
        Close();
        return new DatasetSplit { Tokens = totalTokens, Records = totalRecords, Shards = [.. shards] };
    }

    public void Dispose()
    {
        tokens?.Dispose();
        offsets?.Dispose();
        labels?.Dispose();
        tokens = offsets = labels = null;
        if (scratch.Length > 0) ArrayPool<byte>.Shared.Return(scratch);
        scratch = [];
    }

    /// <summary>
    /// One file being written: buffered, hashed on the way (whole and by blocks), fsynced on <see cref="Finish"/>. On Linux each
    /// <see cref="WriteBehindBytes"/> written are handed to the disk at once and, once there, dropped from the page cache
    /// (as <c>dd oflag=nocache</c> does), so a shard of any size takes at most a few windows of page cache: the pages
    /// the next window takes are the ones just dropped. Filling fresh page-cache pages instead cost ~0.9 s of kernel time
    /// per 400 MB on a VM (each page first touched), as much CPU as the char tokenizer took to encode them, and a large
    /// dataset filled the page cache.
    /// </summary>
    sealed class ShardFile : IDisposable
    {
        /// <summary>How much is written before it is handed to the disk; the window before it is then waited for and dropped.</summary>
        internal const long WriteBehindBytes = 8 << 20;

        readonly string name;
        readonly FileStream stream;
        readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        readonly BlockHasher blockHash;
        readonly List<string> blocks = [];
        readonly Action<long, string> addBlock;
        readonly int blockBytes;
        long bytes, started, dropped;

        public ShardFile(string directory, string name, int blockBytes)
        {
            this.name = name;
            this.blockBytes = blockBytes;
            blockHash = new BlockHasher(blockBytes);
            addBlock = (_, sha) => blocks.Add(sha);
            stream = new FileStream(Path.Combine(directory, name), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
        }

        public void Write(ReadOnlySpan<byte> data)
        {
            stream.Write(data);
            hash.AppendData(data);
            bytes += data.Length;
            blockHash.Append(data, addBlock);
            if (bytes - started >= WriteBehindBytes) WriteBehind();
        }

        /// <summary>Starts writing what was written since the last call to the disk, then waits for the window before it and drops that from the page cache.</summary>
        void WriteBehind()
        {
            if (!OperatingSystem.IsLinux()) return;
            stream.Flush();
            var handle = stream.SafeFileHandle;
            // Hints: a file system without them (or an error, which the fsync on Finish reports) only keeps the pages cached.
            _ = Native.SyncFileRange(handle, started, bytes - started, Native.SyncFileRangeWrite);
            if (started > dropped && Native.SyncFileRange(handle, dropped, started - dropped, Native.SyncFileRangeWaitBefore | Native.SyncFileRangeWrite | Native.SyncFileRangeWaitAfter) == 0)
                _ = Native.PosixFadvise(handle, dropped, started - dropped, Native.FadviseDontNeed);
            dropped = started;
            started = bytes;
        }

        public DatasetFile Finish()
        {
            blockHash.Finish(addBlock);
            stream.Flush(flushToDisk: true);
            if (OperatingSystem.IsLinux()) _ = Native.PosixFadvise(stream.SafeFileHandle, 0, 0, Native.FadviseDontNeed); // on disk now: drop the rest
            stream.Dispose();
            var file = new DatasetFile(name, bytes, Convert.ToHexStringLower(hash.GetHashAndReset())) { BlockBytes = blockBytes, BlockSha256 = [.. blocks] };
            hash.Dispose();
            blockHash.Dispose();
            return file;
        }

        public void Dispose()
        {
            stream.Dispose();
            hash.Dispose();
            blockHash.Dispose();
        }
    }

    static class Native
    {
        public const uint SyncFileRangeWaitBefore = 1, SyncFileRangeWrite = 2, SyncFileRangeWaitAfter = 4;
        public const int FadviseDontNeed = 4;

        [DllImport("libc", EntryPoint = "sync_file_range", SetLastError = true)]
        public static extern int SyncFileRange(SafeFileHandle fd, long offset, long count, uint flags);

        /// <summary>Returns 0 or an error number (not errno).</summary>
        [DllImport("libc", EntryPoint = "posix_fadvise")]
        public static extern int PosixFadvise(SafeFileHandle fd, long offset, long length, int advice);
    }
}
