using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Microsoft.Win32.SafeHandles;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Writes one split's shards into a dataset's (temporary) directory: ids narrowed to the dataset's width, little-endian,
/// a new shard when the current one would pass the shard size; for classification, each record whole in one shard
/// with its offset and label. Each file is hashed as it is written — whole, and by blocks of <c>blockBytes</c>
/// (format version 2: <see cref="DatasetFile.BlockSha256"/>), with no second read — and fsynced when its shard is closed.
/// With <c>hashBehind</c> a language model's token files are hashed on a thread of their own, fed the written buffers
/// in order, so the writing thread only writes.
/// </summary>
public sealed class DatasetSplitWriter : IDisposable
{
    readonly string directory;
    readonly string split;
    readonly int width;
    readonly bool records;
    readonly long shardTokens;
    readonly int blockBytes;
    readonly bool hashBehind;
    readonly List<DatasetShard> shards = [];
    byte[] scratch = ArrayPool<byte>.Shared.Rent(1 << 16);
    ShardFile? tokens, offsets, labels;
    long shardTokenCount, shardRecords, totalTokens, totalRecords;

    /// <param name="width">Bytes per id: 1, 2 or 4.</param>
    /// <param name="records">Classification: records with offsets and labels.</param>
    /// <param name="blockBytes">The block size of the files' block hashes (<see cref="DatasetLayout.BlockBytes"/>).</param>
    /// <param name="hashBehind">Hash the token files on a thread of their own (a language model written from more than one thread's work).</param>
    public DatasetSplitWriter(string directory, string split, int width, bool records, long shardTokens, int blockBytes = DatasetLayout.BlockBytes, bool hashBehind = false)
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
        this.hashBehind = hashBehind && !records;
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
        if (hashBehind)
        {
            var copy = new PooledBytes(ArrayPool<byte>.Shared.Rent(Math.Max(1, ids.Length)));
            try
            {
                ids.CopyTo(copy.Array);
                AppendNarrowed(copy, ids.Length);
            }
            finally
            {
                copy.Release();
            }
            return;
        }
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

    /// <summary>
    /// <see cref="AppendNarrowed(ReadOnlySpan{byte})"/> of the first <paramref name="length"/> bytes of <paramref name="ids"/>;
    /// with hashing behind, the hashing thread holds a reference to them until it has hashed them.
    /// </summary>
    internal void AppendNarrowed(PooledBytes ids, int length)
    {
        if (!hashBehind)
        {
            AppendNarrowed(ids.Array.AsSpan(0, length));
            return;
        }
        if (length % width != 0) throw new ArgumentException($"{length} bytes are not whole ids of {width} bytes", nameof(length));
        var at = 0;
        while (at < length)
        {
            if (tokens is null || shardTokenCount == shardTokens) Open();
            var n = (int)Math.Min((length - at) / width, shardTokens - shardTokenCount);
            tokens!.Write(ids, at, n * width);
            shardTokenCount += n;
            totalTokens += n;
            at += n * width;
        }
    }

    /// <summary>Ids as a shard holds them: <paramref name="width"/> (1, 2 or 4) bytes each, little-endian, into <paramref name="bytes"/> (at least <c>ids.Length × width</c> long).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // hot loop, as CharTokenizer.Encode
    public static void Narrow(ReadOnlySpan<int> ids, Span<byte> bytes, int width)
    {
        bytes = bytes[..(ids.Length * width)];
        if (width == 1)
        {
            // Truncating, a vector at a time (the callers' ids are below the vocabulary: at most 256). Hand-written:
            // TensorPrimitives.ConvertTruncating<int, byte> took 3-4x as long (0.28-0.36 against 0.07-0.10 ns per id).
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
        tokens = new ShardFile(directory, DatasetLayout.ShardName(split, index, "tokens"), blockBytes, hashBehind);
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
        /// <summary>How much is written before it is handed to the disk; the window handed two windows before is then waited for and dropped.</summary>
        internal const long WriteBehindBytes = 8 << 20;

        readonly string name;
        readonly FileStream stream;
        readonly FileHashes hashes;
        readonly HashBehind? behind;
        readonly int blockBytes;
        long bytes, started, handed, dropped;

        public ShardFile(string directory, string name, int blockBytes, bool hashBehind = false)
        {
            this.name = name;
            this.blockBytes = blockBytes;
            hashes = new FileHashes(blockBytes);
            stream = new FileStream(Path.Combine(directory, name), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
            if (hashBehind) behind = new HashBehind(hashes);
        }

        public void Write(ReadOnlySpan<byte> data)
        {
            if (behind is not null) throw new InvalidOperationException("a file hashed behind takes pooled buffers");
            stream.Write(data);
            hashes.Append(data);
            Wrote(data.Length);
        }

        /// <summary>Writes <paramref name="length"/> bytes of <paramref name="data"/> from <paramref name="offset"/>; they are hashed on the hashing thread, which holds a reference to them until then.</summary>
        public void Write(PooledBytes data, int offset, int length)
        {
            var span = data.Array.AsSpan(offset, length);
            stream.Write(span);
            if (behind is not null) behind.Add(data, offset, length);
            else hashes.Append(span);
            Wrote(length);
        }

        void Wrote(int length)
        {
            bytes += length;
            if (bytes - started >= WriteBehindBytes) WriteBehind();
        }

        /// <summary>
        /// Hands what was written since the last call to the disk, then waits for the window handed two calls ago (by now
        /// mostly on the disk, so the wait seldom blocks the writing thread) and drops it from the page cache.
        /// </summary>
        void WriteBehind()
        {
            if (!OperatingSystem.IsLinux()) return;
            stream.Flush();
            var handle = stream.SafeFileHandle;
            // Hints: a file system without them (or an error, which the fsync on Finish reports) only keeps the pages cached.
            _ = Native.SyncFileRange(handle, started, bytes - started, Native.SyncFileRangeWrite);
            if (handed > dropped && Native.SyncFileRange(handle, dropped, handed - dropped, Native.SyncFileRangeWaitBefore | Native.SyncFileRangeWrite | Native.SyncFileRangeWaitAfter) == 0)
                _ = Native.PosixFadvise(handle, dropped, handed - dropped, Native.FadviseDontNeed);
            dropped = handed;
            handed = started;
            started = bytes;
        }

        public DatasetFile Finish()
        {
            behind?.CompleteAdding(); // the hashing thread finishes while the file is synced
            stream.Flush(flushToDisk: true);
            if (OperatingSystem.IsLinux()) _ = Native.PosixFadvise(stream.SafeFileHandle, 0, 0, Native.FadviseDontNeed); // on disk now: drop the rest
            stream.Dispose();
            behind?.Finish();
            var (sha, blocks) = hashes.Finish();
            hashes.Dispose();
            return new DatasetFile(name, bytes, sha) { BlockBytes = blockBytes, BlockSha256 = blocks };
        }

        public void Dispose()
        {
            behind?.Dispose();
            stream.Dispose();
            hashes.Dispose();
        }
    }

    /// <summary>A file's SHA-256, whole and by blocks (format version 2), of the bytes appended in order.</summary>
    sealed class FileHashes : IDisposable
    {
        readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        readonly BlockHasher blockHash;
        readonly List<string> blocks = [];
        readonly Action<long, string> addBlock;

        public FileHashes(int blockBytes)
        {
            blockHash = new BlockHasher(blockBytes);
            addBlock = (_, sha) => blocks.Add(sha);
        }

        public void Append(ReadOnlySpan<byte> data)
        {
            hash.AppendData(data);
            blockHash.Append(data, addBlock);
        }

        public (string Sha256, string[] Blocks) Finish()
        {
            blockHash.Finish(addBlock);
            return (Convert.ToHexStringLower(hash.GetHashAndReset()), [.. blocks]);
        }

        public void Dispose()
        {
            hash.Dispose();
            blockHash.Dispose();
        }
    }

    /// <summary>
    /// Feeds <see cref="FileHashes"/> on a thread of its own, in the order the buffers were written; at most
    /// <see cref="Queued"/> buffers wait (the writer waits for the hashing, bounded memory).
    /// </summary>
    sealed class HashBehind : IDisposable
    {
        const int Queued = 4;
        readonly BlockingCollection<(PooledBytes Data, int Offset, int Length)> queue = new(Queued);
        readonly Thread thread;
        volatile Exception? failure; // set by the hashing thread, read by the writer

        public HashBehind(FileHashes hashes)
        {
            thread = new Thread(() =>
            {
                foreach (var (data, offset, length) in queue.GetConsumingEnumerable())
                {
                    try
                    {
                        if (failure is null) hashes.Append(data.Array.AsSpan(offset, length));
                    }
                    catch (Exception e)
                    {
                        failure = e;
                    }
                    finally
                    {
                        data.Release();
                    }
                }
            }) { IsBackground = true, Name = "prepare-hash" };
            thread.Start();
        }

        public void Add(PooledBytes data, int offset, int length)
        {
            if (failure is { } e) throw new IOException($"hashing the shard failed: {e.Message}", e);
            data.AddRef();
            queue.Add((data, offset, length));
        }

        public void CompleteAdding()
        {
            if (!queue.IsAddingCompleted) queue.CompleteAdding();
        }

        /// <summary>Waits until everything added is hashed.</summary>
        public void Finish()
        {
            CompleteAdding();
            thread.Join();
            if (failure is { } e) throw new IOException($"hashing the shard failed: {e.Message}", e);
        }

        public void Dispose()
        {
            CompleteAdding();
            thread.Join();
            queue.Dispose();
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

/// <summary>A pooled byte array shared by reference count: returned to <see cref="ArrayPool{T}.Shared"/> by its last <see cref="Release"/>.</summary>
internal sealed class PooledBytes(byte[] array)
{
    int references = 1;

    public byte[] Array { get; } = array;

    public void AddRef() => Interlocked.Increment(ref references);

    public void Release()
    {
        if (Interlocked.Decrement(ref references) == 0) ArrayPool<byte>.Shared.Return(Array);
    }
}
