using System.Buffers;
using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.Json;
using Dtrain.Training.Tasks;

namespace Dtrain.Data.Datasets;

/// <summary>
/// A prepared dataset opened for reading (docs/data.md): the manifest is read and checked (format and version), every
/// file it names must exist with its recorded size and — with <c>verify</c> — its SHA-256, ids below the vocabulary,
/// offsets rising and labels known; then the shards are memory-mapped. Every problem is a <see cref="DatasetException"/>
/// naming the dataset and the file: no manifest (preparation never finished), unknown version, missing, truncated or
/// altered shard.
/// </summary>
public sealed class PreparedDataset : IDisposable
{
    readonly List<PreparedShard> opened = [];

    PreparedDataset(string directory, DatasetManifest manifest, ITokenizer tokenizer)
    {
        Directory = directory;
        Manifest = manifest;
        Tokenizer = tokenizer;
        Labels = new LabelSet(manifest.Labels);
        Train = new PreparedSplit(manifest.Train, [.. manifest.Train.Shards.Select(Map)]);
        Validation = new PreparedSplit(manifest.Validation, [.. manifest.Validation.Shards.Select(Map)]);
    }

    PreparedShard Map(DatasetShard s)
    {
        var shard = new PreparedShard(Directory, s, WidthOf(Manifest));
        opened.Add(shard);
        return shard;
    }

    public string Directory { get; }
    public DatasetManifest Manifest { get; }
    public ITokenizer Tokenizer { get; }
    public LabelSet Labels { get; }
    public PreparedSplit Train { get; }
    public PreparedSplit Validation { get; }

    /// <summary>Opens the dataset in <paramref name="directory"/>; <paramref name="verify"/> also hashes every file and checks its content.</summary>
    /// <exception cref="DatasetException">The dataset is incomplete, of an unknown version, or a file is missing, truncated or altered.</exception>
    public static PreparedDataset Open(string directory, bool verify = true)
    {
        ArgumentNullException.ThrowIfNull(directory);
        if (!System.IO.Directory.Exists(directory)) throw new DatasetException(directory, null, "no such directory");
        var manifestPath = Path.Combine(directory, DatasetLayout.ManifestFile);
        if (!File.Exists(manifestPath))
            throw new DatasetException(directory, null, $"has no {DatasetLayout.ManifestFile}: it is not a prepared dataset, or its preparation did not finish (the manifest is written last); prepare it again");
        var manifest = ReadManifest(directory, manifestPath);
        var width = WidthOf(manifest);

        var tokenizerBytes = CheckedBytes(directory, manifest.Tokenizer);
        ITokenizer tokenizer;
        try
        {
            tokenizer = TokenizerFactory.FromState(JsonSerializer.Deserialize<TokenizerState>(tokenizerBytes, DatasetLayout.TokenizerJson) ?? throw new InvalidDataException("is null"));
        }
        catch (Exception e) when (e is JsonException or InvalidDataException)
        {
            throw new DatasetException(directory, manifest.Tokenizer.Name, $"is not a valid tokenizer: {e.Message}");
        }
        if (tokenizer.VocabSize != manifest.VocabSize)
            throw new DatasetException(directory, manifest.Tokenizer.Name, $"holds {tokenizer.VocabSize} tokens, the manifest says {manifest.VocabSize}");

        // A labelled task's shards have an index (offsets and labels); a name no task has is read as unlabelled.
        var labelled = TrainingTasks.Find(manifest.Settings.Task) is { HasLabels: true };
        foreach (var split in new[] { manifest.Train, manifest.Validation })
        {
            long tokens = 0, records = 0;
            foreach (var s in split.Shards)
            {
                if (s.Tokens.Bytes != s.TokenCount * width)
                    throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: {s.Tokens.Name} is {s.Tokens.Bytes} bytes for {s.TokenCount} ids of {width} bytes");
                CheckFile(directory, s.Tokens, verify, (offset, bytes) => CheckIds(directory, s.Tokens.Name, offset / width, bytes, width, manifest.VocabSize));
                if (labelled)
                {
                    if (s.Offsets is null || s.Labels is null || s.Offsets.Bytes != (s.Records + 1) * 8 || s.Labels.Bytes != s.Records * 4)
                        throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: the index of {s.Tokens.Name} does not match its {s.Records} records");
                    CheckFile(directory, s.Offsets, verify, null);
                    CheckFile(directory, s.Labels, verify, null);
                }
                tokens += s.TokenCount;
                records += s.Records;
            }
            if (tokens != split.Tokens || records != split.Records)
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: a split's shards hold {tokens} tokens and {records} records, its totals say {split.Tokens} and {split.Records}");
        }

        var dataset = new PreparedDataset(directory, manifest, tokenizer);
        try
        {
            if (verify && labelled)
                foreach (var shard in dataset.Train.Shards.Concat(dataset.Validation.Shards)) CheckIndex(directory, shard, manifest.Labels.Count);
            return dataset;
        }
        catch
        {
            dataset.Dispose();
            throw;
        }
    }

    static DatasetManifest ReadManifest(string directory, string path) => ParseManifest(directory, File.ReadAllBytes(path));

    /// <summary>Bytes per id of the shards of <paramref name="manifest"/> (one <see cref="ParseManifest"/> accepted: its token_dtype is known).</summary>
    internal static int WidthOf(DatasetManifest manifest) => DatasetLayout.WidthOf(manifest.TokenDtype)
        ?? throw new InvalidOperationException($"token_dtype \"{manifest.TokenDtype}\" was not checked");

    /// <summary>The manifest in <paramref name="bytes"/>, checked for its format, version and token width (<paramref name="directory"/>: the dataset, for messages).</summary>
    internal static DatasetManifest ParseManifest(string directory, byte[] bytes)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("format", out var format) || format.ValueKind != JsonValueKind.String || format.GetString() != DatasetLayout.FormatName)
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is not a dtrain dataset manifest (its \"format\" is not \"{DatasetLayout.FormatName}\")");
            if (!root.TryGetProperty("version", out var version) || !version.TryGetInt32(out var v))
                throw new DatasetException(directory, DatasetLayout.ManifestFile, "has no format version");
            if (v is < DatasetLayout.MinVersion or > DatasetLayout.Version)
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is of format version {v}, which this dtrain does not know (it reads versions {DatasetLayout.MinVersion} to {DatasetLayout.Version}); use a dtrain that does, or prepare the dataset again");
            try
            {
                var manifest = root.Deserialize<DatasetManifest>(DatasetLayout.Json) ?? throw new JsonException("null");
                // Any known width that holds the vocabulary is read (dtrain writes the narrowest: DatasetLayout.WidthFor).
                if (DatasetLayout.WidthOf(manifest.TokenDtype) is not { } width)
                    throw new DatasetException(directory, DatasetLayout.ManifestFile, $"has token_dtype \"{manifest.TokenDtype}\", which this dtrain does not know (it reads {DatasetLayout.Uint8}, {DatasetLayout.Uint16} and {DatasetLayout.Uint32}); use a dtrain that does, or prepare the dataset again");
                if (manifest.VocabSize < 1 || manifest.VocabSize > DatasetLayout.MaxVocabulary(width))
                    throw new DatasetException(directory, DatasetLayout.ManifestFile, $"says token_dtype {manifest.TokenDtype} for a vocabulary of {manifest.VocabSize}: its ids do not fit");
                return CheckBlocks(directory, manifest);
            }
            catch (JsonException e)
            {
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is malformed: {e.Message}");
            }
        }
    }

    /// <summary>
    /// Version 2: every shard file records its block size and one SHA-256 (64 lowercase hex digits) per block. Version 1
    /// records none: block fields there are dropped, so its files are checked whole as that version's readers do.
    /// </summary>
    static DatasetManifest CheckBlocks(string directory, DatasetManifest manifest)
    {
        static IEnumerable<DatasetFile> Files(DatasetSplit split) => split.Shards.SelectMany(s => new[] { s.Tokens, s.Offsets, s.Labels }).OfType<DatasetFile>();
        if (manifest.Version < 2)
        {
            static DatasetFile? Whole(DatasetFile? f) => f is null ? null : f with { BlockBytes = null, BlockSha256 = null };
            static DatasetSplit Strip(DatasetSplit split) => split with { Shards = [.. split.Shards.Select(s => s with { Tokens = Whole(s.Tokens)!, Offsets = Whole(s.Offsets), Labels = Whole(s.Labels) })] };
            return Files(manifest.Train).Concat(Files(manifest.Validation)).Any(f => f.BlockBytes is not null || f.BlockSha256 is not null)
                ? manifest with { Train = Strip(manifest.Train), Validation = Strip(manifest.Validation) }
                : manifest;
        }
        foreach (var f in Files(manifest.Train).Concat(Files(manifest.Validation)))
        {
            if (f.BlockBytes is not { } size || f.BlockSha256 is not { } hashes)
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: {f.Name} has no block_bytes and block_sha256 (format version {manifest.Version} records them for every shard file)");
            if (size is < 1 or > DatasetLayout.MaxBlockBytes)
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: {f.Name} has block_bytes {size}, not in 1..{DatasetLayout.MaxBlockBytes}");
            if (hashes.Count != DatasetFile.BlockCount(f.Bytes, size))
                throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: {f.Name} lists {hashes.Count} block SHA-256, its {f.Bytes:N0} bytes make {DatasetFile.BlockCount(f.Bytes, size)} blocks of {size}");
            for (var i = 0; i < hashes.Count; i++)
                if (hashes[i] is not { Length: 64 } h || !h.All(c => c is >= '0' and <= '9' or >= 'a' and <= 'f'))
                    throw new DatasetException(directory, DatasetLayout.ManifestFile, $"is inconsistent: {f.Name} block {i}'s SHA-256 \"{hashes[i]}\" is not 64 lowercase hex digits");
        }
        return manifest;
    }

    static byte[] CheckedBytes(string directory, DatasetFile entry)
    {
        var path = Path.Combine(directory, entry.Name);
        if (!File.Exists(path)) throw new DatasetException(directory, entry.Name, "is missing");
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length != entry.Bytes) throw new DatasetException(directory, entry.Name, SizeProblem(bytes.Length, entry.Bytes));
        if (Convert.ToHexStringLower(SHA256.HashData(bytes)) != entry.Sha256)
            throw new DatasetException(directory, entry.Name, "does not match its SHA-256 in the manifest: it was altered after preparation");
        return bytes;
    }

    internal static string SizeProblem(long actual, long expected) => actual < expected
        ? $"is truncated: {actual:N0} bytes, the manifest says {expected:N0}"
        : $"is {actual:N0} bytes, the manifest says {expected:N0}: it was altered after preparation";

    /// <summary>Size always; with <paramref name="verify"/>, SHA-256 (and each block's, format version 2) and <paramref name="content"/> checks on each chunk read.</summary>
    static void CheckFile(string directory, DatasetFile entry, bool verify, Action<long, ReadOnlySpan<byte>>? content)
    {
        if (entry.Name.Contains('/') || entry.Name.Contains('\\') || entry.Name is "." or "..")
            throw new DatasetException(directory, DatasetLayout.ManifestFile, $"names a file outside the dataset: \"{entry.Name}\"");
        var path = Path.Combine(directory, entry.Name);
        var info = new FileInfo(path);
        if (!info.Exists) throw new DatasetException(directory, entry.Name, "is missing");
        if (info.Length != entry.Bytes) throw new DatasetException(directory, entry.Name, SizeProblem(info.Length, entry.Bytes));
        if (!verify) return;
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var blockHash = entry.HasBlocks ? new BlockHasher(entry.BlockBytes!.Value) : null;
        void Matches(long block, string sha)
        {
            if (block >= entry.BlockSha256!.Count || sha != entry.BlockSha256[(int)block])
                throw new DatasetException(directory, entry.Name, $"{entry.DescribeBlock(block)} does not match its SHA-256 in the manifest: it was altered after preparation");
        }
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            int n;
            long carry = 0, offset = 0;
            while ((n = s.Read(buffer, (int)carry, buffer.Length - (int)carry)) > 0)
            {
                var have = (int)carry + n;
                hash.AppendData(buffer, (int)carry, n);
                blockHash?.Append(buffer.AsSpan((int)carry, n), Matches);
                var whole = have - have % 4;
                content?.Invoke(offset, buffer.AsSpan(0, whole));
                offset += whole;
                carry = have - whole;
                buffer.AsSpan(whole, (int)carry).CopyTo(buffer);
            }
            // The last bytes short of 4: whole ids of a 1- or 2-byte shard (an odd count of uint16 ids was left unchecked).
            if (carry > 0) content?.Invoke(offset, buffer.AsSpan(0, (int)carry));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        if (Convert.ToHexStringLower(hash.GetHashAndReset()) != entry.Sha256)
            throw new DatasetException(directory, entry.Name, "does not match its SHA-256 in the manifest: it was altered after preparation");
        blockHash?.Finish(Matches);
    }

    /// <summary>The ids in <paramref name="bytes"/> (from id <paramref name="first"/> of the shard on) are below the vocabulary; else the first that is not, by its position in the shard.</summary>
    static void CheckIds(string directory, string name, long first, ReadOnlySpan<byte> bytes, int width, int vocab)
    {
        if (vocab >= DatasetLayout.MaxVocabulary(width)) return; // every id of the width is inside
        int at;
        if (width == 1)
            at = bytes.IndexOfAnyInRange((byte)vocab, byte.MaxValue);
        else if (width == 2)
        {
            var ids = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes);
            at = BitConverter.IsLittleEndian ? ids.IndexOfAnyInRange((ushort)vocab, ushort.MaxValue) : -1;
            if (!BitConverter.IsLittleEndian)
                for (var i = 0; i < ids.Length && at < 0; i++) if (BinaryPrimitives.ReverseEndianness(ids[i]) >= vocab) at = i;
        }
        else
        {
            var ids = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(bytes);
            at = BitConverter.IsLittleEndian ? ids.IndexOfAnyInRange((uint)vocab, uint.MaxValue) : -1;
            if (!BitConverter.IsLittleEndian)
                for (var i = 0; i < ids.Length && at < 0; i++) if (BinaryPrimitives.ReverseEndianness(ids[i]) >= (uint)vocab) at = i;
        }
        if (at < 0) return;
        var id = width == 1 ? bytes[at] : width == 2 ? BinaryPrimitives.ReadUInt16LittleEndian(bytes[(at * 2)..]) : (long)BinaryPrimitives.ReadUInt32LittleEndian(bytes[(at * 4)..]);
        throw new DatasetException(directory, name, $"holds id {id} at token {first + at}, outside the vocabulary of {vocab}");
    }

    static void CheckIndex(string directory, PreparedShard shard, int labels)
    {
        var e = shard.Entry;
        if (shard.Offset(0) != 0 || (long)shard.Offset(e.Records) != e.TokenCount)
            throw new DatasetException(directory, e.Offsets!.Name, $"does not span the {e.TokenCount} tokens of {e.Tokens.Name}");
        for (long k = 0; k < e.Records; k++)
        {
            if (shard.Offset(k + 1) < shard.Offset(k)) throw new DatasetException(directory, e.Offsets!.Name, $"offset {k + 1} is below offset {k}");
            if ((uint)shard.Label(k) >= (uint)labels) throw new DatasetException(directory, e.Labels!.Name, $"record {k} has label id {shard.Label(k)}, outside the {labels} labels");
        }
    }

    public void Dispose()
    {
        foreach (var s in opened) s.Dispose();
        opened.Clear();
    }
}
