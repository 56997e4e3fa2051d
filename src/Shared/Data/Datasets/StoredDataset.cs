using System.Security.Cryptography;
using System.Text.Json;
using Dtrain.Data.Storage;
using Dtrain.Training.Tasks;

namespace Dtrain.Data.Datasets;

/// <summary>
/// A prepared dataset opened from its store (<see cref="DatasetStores.Open"/>: a directory the workers share, or
/// <c>s3://bucket/prefix</c>) for a job: opening reads only the manifest and the tokenizer, and checks them (format,
/// version, totals); a split's shards are opened when a read first touches them (<see cref="PreparedSplit"/>), so a
/// coordinator that plans from the counts never reads a token. A shard is checked against its size and SHA-256 in the
/// manifest when it is opened — memory-mapped in place from a directory; from S3 fetched whole into the store's disk
/// cache (checked there) and mapped, the next shard of the split fetched in the background meanwhile. With
/// <see cref="ShardVerification.Background"/> (a worker), a shard's size is checked when it is opened and its SHA-256
/// afterwards on a low-priority background thread (<see cref="ThrowIfCorrupt"/>, <see cref="VerifiedAsync"/>); an S3
/// shard is then read by ranges, each read fetching only the blocks it touches, never downloaded whole first. A dataset of
/// format version 2 records each shard file's SHA-256 by blocks too: then only the blocks the job reads are checked — a
/// local shard's blocks queued to the background thread as a read first touches them, an S3 shard's blocks as each
/// arrives, before it is cached or used — and nothing else is read for the checks (version 1: whole files). Every problem is a
/// <see cref="DatasetException"/> naming the dataset's URI and the file: a missing or truncated shard, a shard or a
/// manifest that changed under the job (<see cref="ManifestSha256"/> differs from the one the job started with), storage
/// that cannot be reached.
/// </summary>
public sealed class StoredDataset : IDisposable
{
    readonly IDatasetStore store;
    readonly int width;
    readonly List<PreparedShard> shards = [];
    readonly List<Task> readAheads = [];
    readonly CancellationTokenSource closing = new();
    readonly ShardVerifier? verifier;
    int disposed;

    StoredDataset(string uri, IDatasetStore store, DatasetManifest manifest, string manifestSha256, ITokenizer tokenizer, ShardVerification verification)
    {
        Uri = uri;
        this.store = store;
        if (verification == ShardVerification.Background) verifier = new ShardVerifier(uri, store.UriOf);
        Manifest = manifest;
        ManifestSha256 = manifestSha256;
        Tokenizer = tokenizer;
        Labels = new LabelSet(manifest.Labels);
        width = PreparedDataset.WidthOf(manifest);
        Train = new PreparedSplit(manifest.Train, i => OpenShard(manifest.Train, i));
        Validation = new PreparedSplit(manifest.Validation, i => OpenShard(manifest.Validation, i));
    }

    /// <summary>The dataset's root as a job names it (data.dataset).</summary>
    public string Uri { get; }
    public DatasetManifest Manifest { get; }
    /// <summary>SHA-256 (hex) of manifest.json: what a job checks to see the dataset it started with.</summary>
    public string ManifestSha256 { get; }
    public ITokenizer Tokenizer { get; }
    public LabelSet Labels { get; }
    public PreparedSplit Train { get; }
    public PreparedSplit Validation { get; }
    /// <summary>Whether its shards are fetched from object storage (else memory-mapped where they are).</summary>
    public bool Remote => store is S3DatasetStore;
    /// <summary>How many shards of either split have been opened.</summary>
    public int ShardsOpened => Train.ShardsOpened + Validation.ShardsOpened;

    /// <summary>With <see cref="ShardVerification.Background"/>: how many files of the opened shards have been checked whole and matched (format version 1).</summary>
    public int FilesVerified => verifier?.Verified ?? 0;

    /// <summary>With <see cref="ShardVerification.Background"/>: how many blocks of local shards read so far have been checked and matched (format version 2).</summary>
    public long BlocksVerified => verifier?.BlocksVerified ?? 0;

    /// <summary>
    /// With <see cref="ShardVerification.Background"/>: throws the <see cref="DatasetException"/> of the first opened shard
    /// whose SHA-256 turned out not to match (naming the dataset, the file and its URI); else nothing (checks still
    /// running are not waited for).
    /// </summary>
    public void ThrowIfCorrupt()
    {
        if (verifier?.Failure is { } failure) throw new DatasetException(failure.Dataset, failure.File, failure.Problem);
    }

    /// <summary>
    /// With <see cref="ShardVerification.Background"/>: the checks left (of the shards opened so far and later) run at the
    /// calling thread's priority from now on, no longer at the lowest — what a job nearing its end does, so that its
    /// last step does not wait for them. Idempotent; nothing otherwise.
    /// </summary>
    public void HurryVerification() => verifier?.Hurry();

    /// <summary>Whether <see cref="HurryVerification"/> was called (with <see cref="ShardVerification.Background"/>).</summary>
    public bool VerificationHurried => verifier?.Hurried ?? false;

    /// <summary>
    /// Completes when everything read so far has been checked against its SHA-256 — the blocks read (format version 2),
    /// or each shard opened, whole (version 1) — (at once unless
    /// <see cref="ShardVerification.Background"/>; the checks left are hurried, <see cref="HurryVerification"/>: the caller
    /// waits for them); throws as <see cref="ThrowIfCorrupt"/> when one did not match.
    /// </summary>
    public async Task VerifiedAsync(CancellationToken cancel = default)
    {
        if (verifier is null) return;
        verifier.Hurry();
        await verifier.Idle.WaitAsync(cancel).ConfigureAwait(false);
        ThrowIfCorrupt();
    }

    /// <summary>
    /// Opens the dataset at <paramref name="uri"/> (its manifest and tokenizer only). With <paramref name="expectedManifestSha256"/>,
    /// a manifest with another SHA-256 is refused: the dataset changed since the job started.
    /// </summary>
    /// <param name="verification">When a shard's SHA-256 is checked: as it is opened (an S3 shard fetched whole first), or in the background (an S3 shard read by ranges meanwhile).</param>
    /// <exception cref="DatasetException">No dataset there, an unknown version, an inconsistent manifest, storage failing, or another manifest than expected.</exception>
    public static async Task<StoredDataset> OpenAsync(string uri, string? expectedManifestSha256 = null, S3StoreOptions? s3 = null, CancellationToken cancel = default,
        ShardVerification verification = ShardVerification.AtOpen)
    {
        IDatasetStore store;
        try
        {
            store = DatasetStores.Open(uri, s3);
        }
        catch (Exception e) when (e is ArgumentException or DatasetStorageException)
        {
            throw new DatasetException(uri, null, e.Message.StartsWith(uri, StringComparison.Ordinal) ? e.Message[uri.Length..].TrimStart(':', ' ') : e.Message);
        }
        try
        {
            if (store is LocalDatasetStore && !System.IO.Directory.Exists(uri)) throw new DatasetException(uri, null, "no such directory");
            var manifestBytes = await ReadWholeAsync(store, uri, DatasetLayout.ManifestFile, cancel,
                missing: $"has no {DatasetLayout.ManifestFile}: it is not a prepared dataset, or its preparation did not finish (the manifest is written last); prepare it again").ConfigureAwait(false);
            var sha = Convert.ToHexStringLower(SHA256.HashData(manifestBytes));
            if (expectedManifestSha256 is not null && !sha.Equals(expectedManifestSha256, StringComparison.OrdinalIgnoreCase))
                throw new DatasetException(uri, DatasetLayout.ManifestFile,
                    $"changed under the job: its SHA-256 is {sha}, the job started with {expectedManifestSha256.ToLowerInvariant()} (the dataset was prepared again or altered); submit the job again");
            var manifest = PreparedDataset.ParseManifest(uri, manifestBytes);
            var tokenizerBytes = await ReadWholeAsync(store, uri, manifest.Tokenizer.Name, cancel, missing: "is missing").ConfigureAwait(false);
            if (tokenizerBytes.Length != manifest.Tokenizer.Bytes) throw new DatasetException(uri, manifest.Tokenizer.Name, PreparedDataset.SizeProblem(tokenizerBytes.Length, manifest.Tokenizer.Bytes));
            if (Convert.ToHexStringLower(SHA256.HashData(tokenizerBytes)) != manifest.Tokenizer.Sha256)
                throw new DatasetException(uri, manifest.Tokenizer.Name, "does not match its SHA-256 in the manifest: it was altered after preparation");
            ITokenizer tokenizer;
            try
            {
                tokenizer = TokenizerFactory.FromState(JsonSerializer.Deserialize<TokenizerState>(tokenizerBytes, DatasetLayout.TokenizerJson) ?? throw new InvalidDataException("is null"));
            }
            catch (Exception e) when (e is JsonException or InvalidDataException)
            {
                throw new DatasetException(uri, manifest.Tokenizer.Name, $"is not a valid tokenizer: {e.Message}");
            }
            if (tokenizer.VocabSize != manifest.VocabSize)
                throw new DatasetException(uri, manifest.Tokenizer.Name, $"holds {tokenizer.VocabSize} tokens, the manifest says {manifest.VocabSize}");
            CheckTotals(uri, manifest);
            return new StoredDataset(uri, store, manifest, sha, tokenizer, verification);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    /// <summary>The split's totals and every shard's sizes agree with each other (nothing is read but the manifest).</summary>
    static void CheckTotals(string uri, DatasetManifest manifest)
    {
        var width = PreparedDataset.WidthOf(manifest);
        var labelled = TrainingTasks.Find(manifest.Settings.Task) is { HasLabels: true };
        foreach (var split in new[] { manifest.Train, manifest.Validation })
        {
            long tokens = 0, records = 0;
            foreach (var s in split.Shards)
            {
                foreach (var f in new[] { s.Tokens, s.Offsets, s.Labels })
                    if (f is not null && (f.Name.Contains('/') || f.Name.Contains('\\') || f.Name is "." or ".."))
                        throw new DatasetException(uri, DatasetLayout.ManifestFile, $"names a file outside the dataset: \"{f.Name}\"");
                if (s.Tokens.Bytes != s.TokenCount * width)
                    throw new DatasetException(uri, DatasetLayout.ManifestFile, $"is inconsistent: {s.Tokens.Name} is {s.Tokens.Bytes} bytes for {s.TokenCount} ids of {width} bytes");
                if (labelled && (s.Offsets is null || s.Labels is null || s.Offsets.Bytes != (s.Records + 1) * 8 || s.Labels.Bytes != s.Records * 4))
                    throw new DatasetException(uri, DatasetLayout.ManifestFile, $"is inconsistent: the index of {s.Tokens.Name} does not match its {s.Records} records");
                tokens += s.TokenCount;
                records += s.Records;
            }
            if (tokens != split.Tokens || records != split.Records)
                throw new DatasetException(uri, DatasetLayout.ManifestFile, $"is inconsistent: a split's shards hold {tokens} tokens and {records} records, its totals say {split.Tokens} and {split.Records}");
        }
    }

    static async Task<byte[]> ReadWholeAsync(IDatasetStore store, string uri, string name, CancellationToken cancel, string missing)
    {
        try
        {
            var size = await store.SizeAsync(name, cancel).ConfigureAwait(false);
            if (size > 256 << 20) throw new DatasetException(uri, name, $"is {size:N0} bytes: too large for a manifest or tokenizer");
            var bytes = new byte[size];
            await store.ReadAsync(name, 0, bytes, cancel).ConfigureAwait(false);
            return bytes;
        }
        catch (DatasetStorageException e) when (e.Problem.StartsWith("no such", StringComparison.Ordinal) && !e.Problem.StartsWith("no such bucket", StringComparison.Ordinal))
        {
            throw new DatasetException(uri, name, missing);
        }
        catch (DatasetStorageException e)
        {
            throw new DatasetException(uri, name, e.Problem);
        }
    }

    /// <summary>
    /// Shard <paramref name="index"/> of <paramref name="split"/>: its files checked (size and SHA-256) and mapped; from S3,
    /// the next shard's fetched in the background. With <see cref="ShardVerification.Background"/>, an S3 shard is
    /// read by ranges instead (<see cref="OpenRanged"/>).
    /// </summary>
    PreparedShard OpenShard(DatasetSplit split, int index)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        var entry = split.Shards[index];
        if (Remote && verifier is not null)
        {
            var ranged = OpenRanged(entry);
            lock (shards) shards.Add(ranged);
            return ranged;
        }
        var paths = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var f in Files(entry)) paths[f.Name] = Fetch(f).GetAwaiter().GetResult();
        if (Remote && index + 1 < split.Shards.Count)
        {
            var next = split.Shards[index + 1];
            lock (readAheads)
            {
                readAheads.RemoveAll(t => t.IsCompleted);
                // Errors show when the shard is opened for real.
                readAheads.Add(Task.Run(async () => { foreach (var f in Files(next)) await Fetch(f, closing.Token).ConfigureAwait(false); }).ContinueWith(t => _ = t.Exception, TaskScheduler.Default));
            }
        }
        // Version 2 with background checks: the blocks a read touches are queued for their check (nothing else is read).
        var shard = new PreparedShard(entry, width, name => paths[name],
            verifier is null ? null : f => f.HasBlocks ? new TouchedBlocks(f, paths[f.Name], verifier).Touch : null);
        lock (shards) shards.Add(shard);
        return shard;
    }

    /// <summary>
    /// An S3 shard read by ranges: opening it checks only its files' sizes (one HEAD each); a read fetches the blocks it
    /// touches (through the store's disk cache). Format version 2: each block fetched is checked against its SHA-256 in
    /// the manifest as it arrives, and nothing more is fetched. Version 1: every file's SHA-256 is checked in the
    /// background by reading it whole through the same cache (the blocks not read yet fetched then), as a local shard's is.
    /// </summary>
    PreparedShard OpenRanged(DatasetShard entry)
    {
        foreach (var f in Files(entry))
        {
            long size;
            try
            {
                size = store.SizeAsync(f.Name, closing.Token).GetAwaiter().GetResult();
            }
            catch (DatasetStorageException e)
            {
                throw Problem(f, e);
            }
            if (size != f.Bytes) throw new DatasetException(Uri, f.Name, $"{PreparedDataset.SizeProblem(size, f.Bytes)} ({store.UriOf(f.Name)}): the dataset changed under the job");
        }
        foreach (var f in Files(entry))
        {
            var file = f;
            if (!file.HasBlocks) verifier!.Enqueue(file, () => new StoreStream(this, file));
        }
        return new PreparedShard(entry, width, f => (offset, destination) => ReadRange(f, offset, destination, closing.Token));
    }

    /// <summary>For tests: while set and not completed, the background checks of S3 shards fetch nothing (what a read fetches can be counted alone).</summary>
    internal TaskCompletionSource? RemoteChecksHeld { get; set; }

    /// <summary>Bytes of <paramref name="file"/> from the store (blocking: a shard's reads are synchronous; the rows are read off the step's thread).</summary>
    void ReadRange(DatasetFile file, long offset, Memory<byte> destination, CancellationToken cancel)
    {
        try
        {
            // No blocks read ahead: a step's rows are scattered (random windows), and the next steps' rows are read
            // ahead by the worker already; the background check reads sequentially, with the store's read-ahead.
            (store is S3DatasetStore s3
                    ? s3.ReadAsync(file.Name, offset, destination, readAheadBlocks: 0, file.HasBlocks ? new BlockHashes(file.BlockBytes!.Value, file.BlockSha256!) : null, cancel)
                    : store.ReadAsync(file.Name, offset, destination, cancel)).GetAwaiter().GetResult();
        }
        catch (DatasetStorageException e)
        {
            throw Problem(file, e);
        }
    }

    DatasetException Problem(DatasetFile file, DatasetStorageException e) =>
        e.MismatchedBlock is not null ? new DatasetException(Uri, file.Name, $"{e.Problem} ({store.UriOf(file.Name)}): the dataset changed under the job")
        : e.Problem.StartsWith("no such file", StringComparison.Ordinal) || e.Problem.StartsWith("no such object", StringComparison.Ordinal)
            ? new DatasetException(Uri, file.Name, "is missing: the dataset changed under the job, or was never whole")
            : new DatasetException(Uri, file.Name, $"{e.Problem} ({store.UriOf(file.Name)})");

    /// <summary>
    /// The blocks of a local shard file (format version 2) that reads have touched: each queued once for its background
    /// check (<see cref="ShardVerifier.EnqueueBlock"/>) when a read first touches it; a bit per block says it was.
    /// </summary>
    sealed class TouchedBlocks(DatasetFile file, string path, ShardVerifier verifier)
    {
        readonly long[] queued = new long[(DatasetFile.BlockCount(file.Bytes, file.BlockBytes!.Value) + 63) / 64];
        readonly long blockBytes = file.BlockBytes!.Value;

        public void Touch(long offset, long length)
        {
            if (length <= 0) return;
            for (long b = offset / blockBytes, last = (offset + length - 1) / blockBytes; b <= last; b++)
            {
                var bit = 1L << (int)(b & 63);
                ref var word = ref queued[b >> 6];
                if ((Volatile.Read(ref word) & bit) != 0 || (Interlocked.Or(ref word, bit) & bit) != 0) continue;
                verifier.EnqueueBlock(file, b, path);
            }
        }
    }

    /// <summary>A file of the store read from start to end through <see cref="IDatasetStore.ReadAsync"/> (the background check of a ranged shard).</summary>
    sealed class StoreStream(StoredDataset dataset, DatasetFile file) : Stream
    {
        long position;

        public override int Read(byte[] buffer, int offset, int count)
        {
            var n = (int)Math.Min(count, file.Bytes - position);
            if (n <= 0) return 0;
            dataset.RemoteChecksHeld?.Task.Wait(dataset.closing.Token);
            dataset.store.ReadAsync(file.Name, position, buffer.AsMemory(offset, n), dataset.closing.Token).GetAwaiter().GetResult();
            position += n;
            return n;
        }

        public override int Read(Span<byte> buffer)
        {
            var bytes = System.Buffers.ArrayPool<byte>.Shared.Rent(buffer.Length);
            try
            {
                var n = Read(bytes, 0, buffer.Length);
                bytes.AsSpan(0, n).CopyTo(buffer);
                return n;
            }
            finally
            {
                System.Buffers.ArrayPool<byte>.Shared.Return(bytes);
            }
        }

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => file.Bytes;
        public override long Position { get => position; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    static IEnumerable<DatasetFile> Files(DatasetShard s) => new[] { s.Tokens, s.Offsets, s.Labels }.OfType<DatasetFile>();

    /// <summary>
    /// A local path holding <paramref name="file"/> whole, checked against its size and SHA-256 (with
    /// <see cref="ShardVerification.Background"/> and a local store: its size, the SHA-256 queued for the background).
    /// </summary>
    async Task<string> Fetch(DatasetFile file, CancellationToken cancel = default)
    {
        string path;
        try
        {
            path = await store.LocalFileAsync(file.Name, verifier is null ? file.Sha256 : null, cancel).ConfigureAwait(false);
        }
        catch (DatasetStorageException e) when (e.Problem.StartsWith("no such file", StringComparison.Ordinal) || e.Problem.StartsWith("no such object", StringComparison.Ordinal))
        {
            throw new DatasetException(Uri, file.Name, "is missing: the dataset changed under the job, or was never whole");
        }
        catch (DatasetStorageException e) when (e.Problem.StartsWith("SHA-256 is", StringComparison.Ordinal))
        {
            var size = new FileInfo(store.UriOf(file.Name)) is { Exists: true } local ? local.Length : -1;
            throw new DatasetException(Uri, file.Name, size >= 0 && size != file.Bytes
                ? $"{PreparedDataset.SizeProblem(size, file.Bytes)}: the dataset changed under the job"
                : $"does not match its SHA-256 in the manifest ({e.Problem}): the dataset changed under the job");
        }
        catch (DatasetStorageException e)
        {
            throw new DatasetException(Uri, file.Name, e.Problem);
        }
        if (verifier is null)
        {
            var length = new FileInfo(path).Length;
            if (length != file.Bytes) throw new DatasetException(Uri, file.Name, PreparedDataset.SizeProblem(length, file.Bytes));
            return path;
        }
        // The size of the file as opened (what will be mapped); its bytes are checked in the background (version 2: the blocks read, as they are read).
        long opened;
        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
            opened = RandomAccess.GetLength(handle);
        }
        catch (NotSupportedException)
        {
            throw new DatasetException(Uri, file.Name, $"is not a regular file ({store.UriOf(file.Name)}: a pipe or a device): the dataset changed under the job");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetException(Uri, file.Name, $"cannot be opened ({store.UriOf(file.Name)}): {e.Message}");
        }
        if (opened != file.Bytes) throw new DatasetException(Uri, file.Name, $"{PreparedDataset.SizeProblem(opened, file.Bytes)}: the dataset changed under the job");
        if (!file.HasBlocks) verifier.Enqueue(file, path);
        return path;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        // Stopped first: a remote check whose read the cancellation ends is no failure.
        verifier?.Stop();
        closing.Cancel();
        verifier?.Dispose();
        Task[] pending;
        lock (readAheads) pending = [.. readAheads];
        // Cancelled: they end at once (their errors were observed).
        Task.WaitAll(pending);
        closing.Dispose();
        lock (shards)
        {
            foreach (var s in shards) s.Dispose();
            shards.Clear();
        }
        store.Dispose();
    }
}
