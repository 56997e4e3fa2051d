using System.Collections.Concurrent;
using System.Security.Cryptography;
using Amazon.S3;
using Amazon.S3.Model;

namespace Dtrain.Data.Storage;

/// <summary>
/// A dataset under <c>s3://bucket/prefix</c> on S3 or an S3-compatible server. Reads are ranged GETs of fixed-size
/// blocks (<see cref="S3StoreOptions.BlockBytes"/>) kept in a bounded LRU cache on local disk (<see cref="DiskCache"/>),
/// so a block is fetched once; after each read the next blocks are fetched in the background (read-ahead). A read given
/// the file's <see cref="BlockHashes"/> (a dataset of format version 2) uses their block size and checks each block's
/// SHA-256 as it arrives, before it enters the cache: a mismatch fails the read naming the block, and a cached block
/// (stored only once it matched, under a key naming its SHA-256) is trusted as it is. An object's
/// size and ETag are taken once (HEAD); a later GET that sees another ETag or size fails ("changed while being read").
/// Transient failures are retried with exponential backoff (<see cref="S3StoreOptions.Retry"/>), then fail naming the
/// URI; refused credentials, a missing bucket or key and a truncated object fail at once. Also uploads a directory
/// (<see cref="UploadDirectoryAsync"/>) and publishes a prepared dataset, manifest last (<see cref="PublishDirectoryAsync"/>).
/// </summary>
public sealed class S3DatasetStore : IDatasetStore
{
    readonly S3Location location;
    readonly S3StoreOptions options;
    readonly IAmazonS3 client;
    readonly bool ownsClient;
    readonly DiskCache cache;
    readonly ConcurrentDictionary<string, Task<ObjectInfo>> objects = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<string, Task> inflight = new(StringComparer.Ordinal);
    readonly ConcurrentDictionary<Task, bool> readAheads = new();
    readonly CancellationTokenSource disposal = new();
    long getRequests;

    public S3DatasetStore(string uri, S3StoreOptions? options = null, IAmazonS3? client = null)
    {
        location = S3Location.Parse(uri);
        this.options = options ?? S3StoreOptions.FromEnvironment();
        if (this.options.BlockBytes < 1) throw new ArgumentException($"{uri}: BlockBytes is {this.options.BlockBytes}; at least 1");
        ownsClient = client is null;
        try
        {
            this.client = client ?? this.options.CreateClient();
        }
        catch (Amazon.Runtime.AmazonClientException e)
        {
            // The SDK's "No RegionEndpoint or ServiceURL configured" names neither dtrain's variables nor the dataset.
            throw new DatasetStorageException(location.ToString(),
                $"no S3 endpoint or region: set DTRAIN_S3_ENDPOINT (an S3-compatible server, http://host:9000) or AWS_REGION (AWS) ({e.Message})");
        }
        cache = new DiskCache(this.options.CacheDirectory, this.options.CacheBytes);
        Root = location.ToString();
    }

    public string Root { get; }
    public S3Location Location => location;
    public DiskCache Cache => cache;

    /// <summary>GET requests sent so far, every attempt counted (for tests and diagnostics).</summary>
    public long GetRequests => Interlocked.Read(ref getRequests);

    public string UriOf(string name) => location.UriOf(StoreNames.Check(Root, name));

    public async Task<IReadOnlyList<StoredFile>> ListAsync(CancellationToken cancellationToken = default)
    {
        var files = new List<StoredFile>();
        string? token = null;
        do
        {
            var request = new ListObjectsV2Request { BucketName = location.Bucket, Prefix = location.Prefix, ContinuationToken = token };
            var page = await options.Retry.RunAsync(Root, "listing",
                (_, ct) => client.ListObjectsV2Async(request, ct), S3Failures.Classify, cancellationToken).ConfigureAwait(false);
            foreach (var o in page.S3Objects ?? [])
                if (!o.Key.EndsWith('/')) files.Add(new StoredFile(o.Key[location.Prefix.Length..], o.Size ?? 0));
            token = page.IsTruncated == true ? page.NextContinuationToken : null;
        }
        while (token is not null);
        files.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return files;
    }

    public async Task<long> SizeAsync(string name, CancellationToken cancellationToken = default) =>
        (await InfoAsync(name, cancellationToken).ConfigureAwait(false)).Size;

    public Task ReadAsync(string name, long offset, Memory<byte> destination, CancellationToken cancellationToken = default) =>
        ReadAsync(name, offset, destination, options.ReadAheadBlocks, cancellationToken);

    /// <summary>
    /// <see cref="ReadAsync(string, long, Memory{byte}, CancellationToken)"/> reading <paramref name="readAheadBlocks"/>
    /// blocks ahead instead of <see cref="S3StoreOptions.ReadAheadBlocks"/>: 0 for scattered reads (a step's random
    /// windows), where blocks read ahead would only compete with the blocks needed.
    /// </summary>
    public Task ReadAsync(string name, long offset, Memory<byte> destination, int readAheadBlocks, CancellationToken cancellationToken = default) =>
        ReadAsync(name, offset, destination, readAheadBlocks, null, cancellationToken);

    /// <summary>
    /// <see cref="ReadAsync(string, long, Memory{byte}, int, CancellationToken)"/> by the blocks of <paramref name="blocks"/>
    /// (when given): each block fetched is checked against its SHA-256 there before it is cached or used; a mismatch is a
    /// <see cref="DatasetStorageException"/> with <see cref="DatasetStorageException.MismatchedBlock"/>, naming the object
    /// and the block (the block is not cached).
    /// </summary>
    public async Task ReadAsync(string name, long offset, Memory<byte> destination, int readAheadBlocks, BlockHashes? blocks, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(readAheadBlocks);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ObjectDisposedException.ThrowIf(disposal.IsCancellationRequested, this);
        var info = await InfoAsync(name, cancellationToken).ConfigureAwait(false);
        if (offset + destination.Length > info.Size)
            throw new DatasetStorageException(info.Uri, $"truncated: holds {info.Size} bytes, bytes {offset}..{offset + destination.Length - 1} were asked for");
        if (destination.Length == 0) return;
        long block = blocks?.BlockBytes ?? options.BlockBytes;
        if (blocks is not null && (block < 1 || blocks.Sha256.Count != (info.Size + block - 1) / block))
            throw new DatasetStorageException(info.Uri, $"holds {info.Size} bytes: {(info.Size + block - 1) / Math.Max(1, block)} blocks of {block}, the manifest lists {blocks.Sha256.Count} block SHA-256 (the object changed)");
        var first = offset / block;
        var last = (offset + destination.Length - 1) / block;
        for (var index = first; index <= last; index++)
        {
            var blockStart = index * block;
            var from = Math.Max(offset, blockStart);
            var to = Math.Min(offset + destination.Length, blockStart + block);
            var target = destination.Slice((int)(from - offset), (int)(to - from));
            var key = BlockKey(info, index, block, blocks);
            // A block fetched goes straight to the disk cache and is read from there (never held on the heap whole);
            // one evicted again before it could be read (reads at once needing more than the cache holds) is fetched again.
            for (var attempt = 1; !cache.TryRead(key, from - blockStart, target.Span); attempt++)
            {
                if (attempt > 3)
                    throw new DatasetStorageException(info.Uri, $"bytes {blockStart}..{Math.Min(info.Size, blockStart + block) - 1} were evicted from the local cache before they could be read, {attempt - 1} times: the cache ({cache.CapacityBytes} bytes, DTRAIN_S3_CACHE_MB) is too small for the reads running at once");
                await BlockAsync(info, index, key, (int)block, blocks?.Sha256[(int)index]).WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        for (var ahead = last + 1; ahead <= last + readAheadBlocks && ahead * block < info.Size; ahead++)
        {
            var key = BlockKey(info, ahead, block, blocks);
            if (inflight.ContainsKey(key) || cache.TryGet(key) is not null) continue;
            var task = BlockAsync(info, ahead, key, (int)block, blocks?.Sha256[(int)ahead]);
            readAheads[task] = true;
            // A failed read-ahead is forgotten: the read that needs the block fetches it again and reports.
            _ = task.ContinueWith(t => { _ = t.Exception; readAheads.TryRemove(t, out _); }, TaskScheduler.Default);
        }
    }

    /// <summary>Completes when every read-ahead started so far has finished (succeeded or not): for tests.</summary>
    public Task ReadAheadIdleAsync() => Task.WhenAll(readAheads.Keys.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)));

    public async Task<string> LocalFileAsync(string name, string? sha256 = null, CancellationToken cancellationToken = default)
    {
        if (sha256 is not null && !StoreNames.IsSha256(sha256))
            throw new ArgumentException($"{UriOf(name)}: \"{sha256}\" is not a SHA-256 (64 hex digits)", nameof(sha256));
        var info = await InfoAsync(name, cancellationToken).ConfigureAwait(false);
        var key = $"file|{location.Bucket}|{info.Key}|{info.ETag}|{info.Size}";
        if (cache.TryGet(key) is { } cached)
        {
            if (sha256 is null) return cached;
            // Checked when it was stored, and again now: the cache directory is local disk others may touch.
            if (await FileSha256(cached, cancellationToken).ConfigureAwait(false) is var again && again.Equals(sha256, StringComparison.OrdinalIgnoreCase))
                return cached;
            cache.Remove(key);
        }
        if (info.Size > cache.CapacityBytes)
            throw new DatasetStorageException(info.Uri, $"holds {info.Size} bytes, more than the local cache's {cache.CapacityBytes} (DTRAIN_S3_CACHE_MB)");
        var temp = cache.TempPath();
        try
        {
            string actual;
            await using (var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous))
            using (var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256))
            {
                var buffer = new byte[Math.Min(options.BlockBytes, Math.Max(1, info.Size))];
                for (long at = 0; at < info.Size; at += buffer.Length)
                {
                    var chunk = buffer.AsMemory(0, (int)Math.Min(buffer.Length, info.Size - at));
                    await ReadAsync(name, at, chunk, cancellationToken).ConfigureAwait(false);
                    hash.AppendData(chunk.Span);
                    await file.WriteAsync(chunk, cancellationToken).ConfigureAwait(false);
                }
                actual = Convert.ToHexStringLower(hash.GetHashAndReset());
            }
            if (sha256 is not null && !actual.Equals(sha256, StringComparison.OrdinalIgnoreCase))
                throw new DatasetStorageException(info.Uri, $"SHA-256 is {actual}, expected {sha256.ToLowerInvariant()} (the object changed or is corrupt)");
            return cache.Adopt(key, temp);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>
    /// Uploads every file under <paramref name="directory"/> (recursively) to this store's prefix, names relative to
    /// it, in ordinal order except that the names in <paramref name="last"/> go last, in the order given (a manifest
    /// written last: a reader never sees it before the files it lists). Files larger than
    /// <see cref="S3StoreOptions.PartBytes"/> go as multipart uploads. Returns the files uploaded.
    /// </summary>
    public async Task<IReadOnlyList<StoredFile>> UploadDirectoryAsync(string directory, IReadOnlyList<string>? last = null, CancellationToken cancellationToken = default)
    {
        var root = Path.GetFullPath(directory);
        if (!Directory.Exists(root)) throw new DatasetStorageException(directory, "no such directory to upload");
        var files = LocalFiles(root)
            .OrderBy(f => last is null ? -1 : IndexOf(last, f.Name)).ThenBy(f => f.Name, StringComparer.Ordinal).ToList();
        await PutFilesAsync(root, files, cancellationToken).ConfigureAwait(false);
        return files;
    }

    /// <summary>
    /// Publishes the complete dataset in <paramref name="directory"/> under this store's prefix with
    /// <paramref name="manifest"/> put last, so the prefix never holds a manifest beside files it does not describe.
    /// A prefix that holds any object is refused unless <paramref name="replace"/>; replacing deletes the old manifest
    /// first (the old dataset stops being one), puts the new files, deletes the old objects the new dataset does not
    /// have, then puts the new manifest. A failure part-way leaves the prefix without a manifest: not a dataset.
    /// </summary>
    public async Task<IReadOnlyList<StoredFile>> PublishDirectoryAsync(string directory, string manifest, bool replace, CancellationToken cancellationToken = default)
    {
        var root = Path.GetFullPath(directory);
        if (!File.Exists(Path.Combine(root, manifest))) throw new DatasetStorageException(Path.Combine(root, manifest), "no such file to publish (the dataset is not complete)");
        var files = LocalFiles(root).OrderBy(f => f.Name == manifest ? 1 : 0).ThenBy(f => f.Name, StringComparer.Ordinal).ToList();
        var existing = await ListAsync(cancellationToken).ConfigureAwait(false);
        if (existing.Count > 0 && !replace)
            throw new DatasetStorageException(Root, $"is not empty: holds {existing.Count} object(s) ({string.Join(", ", existing.Take(3).Select(f => f.Name))}{(existing.Count > 3 ? ", ..." : "")})");
        if (existing.Any(f => f.Name == manifest)) await DeleteAsync(manifest, cancellationToken).ConfigureAwait(false);
        await PutFilesAsync(root, files.Where(f => f.Name != manifest), cancellationToken).ConfigureAwait(false);
        var fresh = files.Select(f => f.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var stale in existing.Where(f => !fresh.Contains(f.Name) && f.Name != manifest))
            await DeleteAsync(stale.Name, cancellationToken).ConfigureAwait(false);
        await PutFilesAsync(root, files.Where(f => f.Name == manifest), cancellationToken).ConfigureAwait(false);
        return files;
    }

    static IEnumerable<StoredFile> LocalFiles(string root) =>
        new DirectoryInfo(root).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 })
            .Select(f => new StoredFile(Path.GetRelativePath(root, f.FullName).Replace(Path.DirectorySeparatorChar, '/'), f.Length));

    async Task PutFilesAsync(string root, IEnumerable<StoredFile> files, CancellationToken cancellationToken)
    {
        foreach (var file in files)
        {
            var path = Path.Combine(root, file.Name);
            if (file.Size > options.PartBytes) await PutMultipartAsync(file.Name, path, file.Size, cancellationToken).ConfigureAwait(false);
            else await PutAsync(file.Name, path, cancellationToken).ConfigureAwait(false);
            objects.TryRemove(file.Name, out _);
        }
    }

    /// <summary>Deletes object <paramref name="name"/> under the prefix (retried like every request).</summary>
    public async Task DeleteAsync(string name, CancellationToken cancellationToken = default)
    {
        await options.Retry.RunAsync(UriOf(name), "deleting",
            (_, ct) => client.DeleteObjectAsync(new DeleteObjectRequest { BucketName = location.Bucket, Key = location.KeyOf(name) }, ct),
            S3Failures.Classify, cancellationToken).ConfigureAwait(false);
        objects.TryRemove(name, out _);
    }

    static int IndexOf(IReadOnlyList<string> names, string name)
    {
        for (var i = 0; i < names.Count; i++) if (names[i] == name) return i;
        return -1;
    }

    Task PutAsync(string name, string path, CancellationToken cancellationToken) =>
        options.Retry.RunAsync(UriOf(name), "upload",
            (_, ct) => client.PutObjectAsync(new PutObjectRequest
            {
                BucketName = location.Bucket, Key = location.KeyOf(name), FilePath = path, UseChunkEncoding = false,
            }, ct), S3Failures.Classify, cancellationToken);

    async Task PutMultipartAsync(string name, string path, long size, CancellationToken cancellationToken)
    {
        var uri = UriOf(name);
        var key = location.KeyOf(name);
        var start = await options.Retry.RunAsync(uri, "starting a multipart upload",
            (_, ct) => client.InitiateMultipartUploadAsync(new InitiateMultipartUploadRequest { BucketName = location.Bucket, Key = key }, ct),
            S3Failures.Classify, cancellationToken).ConfigureAwait(false);
        try
        {
            var parts = new List<PartETag>();
            var number = 1;
            for (long at = 0; at < size; at += options.PartBytes, number++)
            {
                var partNumber = number;
                var position = at;
                var part = await options.Retry.RunAsync(uri, $"uploading part {partNumber}",
                    (_, ct) => client.UploadPartAsync(new UploadPartRequest
                    {
                        BucketName = location.Bucket, Key = key, UploadId = start.UploadId, PartNumber = partNumber,
                        FilePath = path, FilePosition = position, PartSize = Math.Min(options.PartBytes, size - position), UseChunkEncoding = false,
                    }, ct), S3Failures.Classify, cancellationToken).ConfigureAwait(false);
                parts.Add(new PartETag(partNumber, part.ETag));
            }
            await options.Retry.RunAsync(uri, "completing a multipart upload",
                (_, ct) => client.CompleteMultipartUploadAsync(new CompleteMultipartUploadRequest
                {
                    BucketName = location.Bucket, Key = key, UploadId = start.UploadId, PartETags = parts,
                }, ct), S3Failures.Classify, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            try
            {
                await client.AbortMultipartUploadAsync(new AbortMultipartUploadRequest { BucketName = location.Bucket, Key = key, UploadId = start.UploadId },
                    CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (S3Failures.Classify(e, CancellationToken.None) is not null)
            {
                // The upload failed already; an incomplete upload left behind is the bucket's lifecycle rules' to clear.
            }
            throw;
        }
    }

    async Task<ObjectInfo> InfoAsync(string name, CancellationToken cancellationToken)
    {
        StoreNames.Check(Root, name);
        var task = objects.GetOrAdd(name, n => HeadAsync(n, disposal.Token));
        try
        {
            return await task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch when (task.IsFaulted || task.IsCanceled)
        {
            objects.TryRemove(KeyValuePair.Create(name, task));   // a failed look-up is made again next time
            throw;
        }
    }

    async Task<ObjectInfo> HeadAsync(string name, CancellationToken cancellationToken)
    {
        var uri = location.UriOf(name);
        var key = location.KeyOf(name);
        var head = await options.Retry.RunAsync(uri, "looking up the object",
            (_, ct) => client.GetObjectMetadataAsync(new GetObjectMetadataRequest { BucketName = location.Bucket, Key = key }, ct),
            S3Failures.Classify, cancellationToken).ConfigureAwait(false);
        return new ObjectInfo(name, key, uri, head.ContentLength, head.ETag ?? "");
    }

    /// <summary>A block's cache key; a checked block's names the SHA-256 it matched, so a cached entry is one that passed that check.</summary>
    string BlockKey(ObjectInfo info, long index, long blockBytes, BlockHashes? blocks) =>
        $"block|{location.Bucket}|{info.Key}|{info.ETag}|{info.Size}|{blockBytes}|{index}" + (blocks is null ? "" : $"|sha256={blocks.Sha256[(int)index]}");

    /// <summary>Block <paramref name="index"/> of the object into the disk cache (checked against <paramref name="sha256"/> when given), fetched once however many readers want it at the same time.</summary>
    Task BlockAsync(ObjectInfo info, long index, string key, int blockBytes, string? sha256)
    {
        var fresh = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var task = inflight.GetOrAdd(key, fresh.Task);
        if (task != fresh.Task) return task;
        _ = FetchBlockAsync(info, index, key, blockBytes, sha256, fresh);
        return fresh.Task;
    }

    async Task FetchBlockAsync(ObjectInfo info, long index, string key, int blockBytes, string? sha256, TaskCompletionSource result)
    {
        var temp = cache.TempPath();
        try
        {
            var start = index * (long)blockBytes;
            var length = (int)Math.Min(blockBytes, info.Size - start);
            var actual = await options.Retry.RunAsync(info.Uri, $"reading bytes {start}..{start + length - 1}",
                (_, ct) => GetRangeAsync(info, start, length, temp, ct),
                S3Failures.Classify, disposal.Token).ConfigureAwait(false);
            if (sha256 is not null && !actual.Equals(sha256, StringComparison.OrdinalIgnoreCase))
                throw new DatasetStorageException(info.Uri, $"block {index} (bytes {start}-{start + length - 1}) does not match its SHA-256 in the manifest (SHA-256 is {actual}, expected {sha256.ToLowerInvariant()})")
                    { MismatchedBlock = index };
            cache.Adopt(key, temp);
            result.TrySetResult();
        }
        catch (Exception e)
        {
            result.TrySetException(e);
        }
        finally
        {
            inflight.TryRemove(KeyValuePair.Create(key, (Task)result.Task));
            try
            {
                if (File.Exists(temp)) File.Delete(temp);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Left for the next start to clean (a temporary name).
            }
        }
    }

    /// <summary>Bytes [start, start + length) of the object streamed into the file <paramref name="path"/> (replaced); returns their SHA-256 (lowercase hex), hashed on the way.</summary>
    async Task<string> GetRangeAsync(ObjectInfo info, long start, int length, string path, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref getRequests);
        using var response = await client.GetObjectAsync(new GetObjectRequest
        {
            BucketName = location.Bucket, Key = info.Key, ByteRange = new ByteRange(start, start + length - 1),
        }, cancellationToken).ConfigureAwait(false);
        if (!string.IsNullOrEmpty(info.ETag) && !string.IsNullOrEmpty(response.ETag) && response.ETag != info.ETag)
            throw new DatasetStorageException(info.Uri, $"changed while being read: ETag {response.ETag}, was {info.ETag}");
        if (TotalOf(response.ContentRange) is { } total && total != info.Size)
            throw new DatasetStorageException(info.Uri, $"changed while being read: holds {total} bytes, held {info.Size}");
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Min(length, 1 << 16));
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        try
        {
            await using var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.Asynchronous);
            await using var body = response.ResponseStream;
            var done = 0;
            while (done < length)
            {
                var n = await body.ReadAsync(buffer.AsMemory(0, Math.Min(buffer.Length, length - done)), cancellationToken).ConfigureAwait(false);
                if (n == 0) throw new IOException($"the connection ended after {done} of {length} bytes");
                await file.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                hash.AppendData(buffer, 0, n);
                done += n;
            }
            return Convert.ToHexStringLower(hash.GetHashAndReset());
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The object's total size from a Content-Range header ("bytes 0-99/1234"), when there is one.</summary>
    static long? TotalOf(string? contentRange) =>
        contentRange is not null && contentRange.LastIndexOf('/') is var slash and >= 0
            && long.TryParse(contentRange.AsSpan(slash + 1), out var total) ? total : null;

    static async Task<string> FileSha256(string path, CancellationToken cancellationToken)
    {
        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        return Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false));
    }

    public void Dispose()
    {
        if (disposal.IsCancellationRequested) return;
        disposal.Cancel();
        if (ownsClient) client.Dispose();
        disposal.Dispose();
    }

    sealed record ObjectInfo(string Name, string Key, string Uri, long Size, string ETag);
}
