using System.Security.Cryptography;
using System.Text.Json.Nodes;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// Format version 2 (real files): every shard file records the SHA-256 of each block (block_bytes, block_sha256) beside
/// its whole SHA-256, computed as it is written; a worker (<see cref="ShardVerification.Background"/>) checks exactly the
/// blocks its reads touch, on the background thread, and an altered block it reads fails naming the shard and the block;
/// blocks never read are never read for a check. A version 1 dataset (no block fields) is still read and checked whole;
/// a version this dtrain does not know is refused naming it.
/// </summary>
public sealed class BlockHashTests : IDisposable
{
    const int Block = 64;

    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>A dataset in shards of 400 tokens (400 bytes of uint8 char ids: 7 blocks of 64, the last one 16 bytes; more with wider ids).</summary>
    string Prepared(string name = "ds", string task = TaskKinds.LanguageModel)
    {
        var file = task == TaskKinds.LanguageModel
            ? dir.Write("corpus.txt", string.Concat(Enumerable.Range(0, 300).Select(i => $"Line {i}: some words {i % 13} and {i % 7}\n")))
            : dir.Write("c.jsonl", string.Concat(Enumerable.Range(0, 90).Select(i => $"{{\"text\":\"message {i} {new string('w', i % 17)} end\",\"label\":\"{(i % 3 == 0 ? "spam" : "ham")}\"}}\n")));
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, name), [file]) with { Task = task, ShardTokens = 400, ChunkChars = 4096, BlockBytes = Block };
        DatasetPreparer.Prepare(o);
        return o.Output;
    }

    static JsonObject Manifest(string dataset) => JsonNode.Parse(File.ReadAllText(Path.Combine(dataset, DatasetLayout.ManifestFile)))!.AsObject();

    [Theory]
    [InlineData(TaskKinds.LanguageModel)]
    [InlineData(TaskKinds.Classification)]
    public void Every_shard_file_records_the_sha256_of_each_block_as_written(string task)
    {
        var dataset = Prepared(task: task);
        var manifest = Manifest(dataset);
        Assert.Equal(2, manifest["version"]!.GetValue<int>());
        var files = 0;
        foreach (var split in new[] { "train", "validation" })
            foreach (var shard in manifest[split]!["shards"]!.AsArray())
                foreach (var kind in new[] { "tokens", "offsets", "labels" })
                {
                    if (shard![kind] is not JsonObject entry) continue;
                    var bytes = File.ReadAllBytes(Path.Combine(dataset, entry["name"]!.GetValue<string>()));
                    Assert.Equal(Block, entry["block_bytes"]!.GetValue<int>());
                    var expected = bytes.Chunk(Block).Select(b => Convert.ToHexStringLower(SHA256.HashData(b))).ToList();
                    Assert.Equal(expected, entry["block_sha256"]!.AsArray().Select(h => h!.GetValue<string>()));
                    Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(bytes)), entry["sha256"]!.GetValue<string>());
                    files++;
                }
        Assert.True(files >= (task == TaskKinds.LanguageModel ? 2 : 6), $"{files} files");
        // The tokenizer is read whole: no blocks.
        Assert.Null(manifest["tokenizer"]!["block_sha256"]);
        using var opened = PreparedDataset.Open(dataset);
        Assert.True(opened.Manifest.Train.Shards[0].Tokens.HasBlocks);
    }

    [Fact]
    public void By_default_the_blocks_are_the_s3_stores_8_mib()
    {
        Assert.Equal(8 << 20, DatasetLayout.BlockBytes);
        Assert.Equal(DatasetLayout.BlockBytes, new Dtrain.Data.Storage.S3StoreOptions().BlockBytes);
        var file = dir.Write("small.txt", "tiny text, one block\n");
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "d"), [file]) with { ShardTokens = 1000 };
        DatasetPreparer.Prepare(o);
        var tokens = Manifest(o.Output)["train"]!["shards"]![0]!["tokens"]!;
        Assert.Equal(DatasetLayout.BlockBytes, tokens["block_bytes"]!.GetValue<int>());
        // One short block: its SHA-256 is the file's.
        Assert.Equal(tokens["sha256"]!.GetValue<string>(), Assert.Single(tokens["block_sha256"]!.AsArray())!.GetValue<string>());
    }

    [Fact]
    public async Task A_worker_checks_exactly_the_blocks_its_reads_touch_and_never_reads_the_others()
    {
        var dataset = Prepared();
        using var expected = PreparedDataset.Open(dataset);
        var shard = expected.Manifest.Train.Shards[1];
        var width = (int)(shard.Tokens.Bytes / shard.TokenCount);
        var blocks = (int)DatasetFile.BlockCount(shard.Tokens.Bytes, Block);
        Assert.True(blocks >= 7, $"{shard.Tokens.Name}: {shard.Tokens.Bytes} bytes, {blocks} blocks");
        Assert.Equal(blocks, shard.Tokens.BlockSha256!.Count);
        var path = Path.Combine(dataset, shard.Tokens.Name);
        // Every block but 2, 3 and 5 altered in place (same size): reads of blocks 2-3 and 5 alone must pass.
        var altered = File.ReadAllBytes(path);
        for (var b = 0; b < blocks; b++)
            if (b is not (2 or 3 or 5)) altered[b * Block] ^= 0x01;
        File.WriteAllBytes(path, altered);
        var start = expected.Manifest.Train.Shards[0].TokenCount;
        // Ids of shard 1 whose bytes are [first, first + bytes).
        (long Start, int[] Ids) Ids(long first, int bytes) => (start + first / width, new int[bytes / width]);

        using var ds = await StoredDataset.OpenAsync(dataset, verification: ShardVerification.Background);
        var (at, ids) = Ids(128, 120);           // bytes 128..247: blocks 2 and 3
        ds.Train.Read(at, ids);
        Assert.Equal(expected.Train.ReadAllTokens().AsSpan((int)at, ids.Length).ToArray(), ids);
        var (at5, ids5) = Ids(5 * Block, 20);    // block 5
        ds.Train.Read(at5, ids5);
        ds.Train.Read(at, ids);                  // again: queued once
        // What a job's last step waits for: the 3 blocks read, nothing else.
        await ds.VerifiedAsync();
        Assert.Equal(3, ds.BlocksVerified);
        Assert.Equal(0, ds.FilesVerified);
        ds.ThrowIfCorrupt();

        // Reading an altered block fails the checks, naming the shard, the block and its bytes.
        var (at6, ids6) = Ids(6 * Block, 8);
        ds.Train.Read(at6, ids6);
        var e = await Assert.ThrowsAsync<DatasetException>(() => ds.VerifiedAsync());
        Assert.Contains($"dataset {dataset}: {shard.Tokens.Name} block 6 (bytes {6 * Block}-{Math.Min(shard.Tokens.Bytes, 7 * Block) - 1}) does not match its SHA-256 in the manifest ({path}: SHA-256 is ", e.Message);
        Assert.EndsWith($"expected {shard.Tokens.BlockSha256[6]}): the dataset changed under the job", e.Message);
        Assert.Equal(e.Message, Assert.Throws<DatasetException>(ds.ThrowIfCorrupt).Message);
    }

    [Fact]
    public async Task The_last_block_of_a_file_is_checked_short()
    {
        var dataset = Prepared();
        using var expected = PreparedDataset.Open(dataset);
        var shard = expected.Manifest.Train.Shards[0];
        var last = DatasetFile.BlockCount(shard.Tokens.Bytes, Block) - 1;
        Assert.NotEqual(0, shard.Tokens.Bytes % Block);
        using (var ds = await StoredDataset.OpenAsync(dataset, verification: ShardVerification.Background))
        {
            ds.Train.Read(shard.TokenCount - 3, new int[3]);
            await ds.VerifiedAsync();
            Assert.Equal(1, ds.BlocksVerified);
        }
        var path = Path.Combine(dataset, shard.Tokens.Name);
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x01;
        File.WriteAllBytes(path, bytes);
        using var again = await StoredDataset.OpenAsync(dataset, verification: ShardVerification.Background);
        again.Train.Read(shard.TokenCount - 3, new int[3]);
        var e = await Assert.ThrowsAsync<DatasetException>(() => again.VerifiedAsync());
        Assert.Contains($"{shard.Tokens.Name} block {last} (bytes {last * Block}-{shard.Tokens.Bytes - 1}) does not match its SHA-256 in the manifest", e.Message);
    }

    [Theory]
    [InlineData(TaskKinds.LanguageModel)]
    [InlineData(TaskKinds.Classification)]
    public async Task A_version_1_dataset_is_read_and_its_shards_checked_whole(string task)
    {
        var dataset = Prepared(task: task);
        using (var v2 = PreparedDataset.Open(dataset)) Assert.True(v2.Manifest.Train.Shards[0].Tokens.HasBlocks);
        PrepareTestSupport.AsVersion1(dataset);
        using var expected = PreparedDataset.Open(dataset);
        Assert.Equal(1, expected.Manifest.Version);
        Assert.False(expected.Manifest.Train.Shards[0].Tokens.HasBlocks);
        using var ds = await StoredDataset.OpenAsync(dataset, verification: ShardVerification.Background);
        if (task == TaskKinds.LanguageModel) ds.Train.Read(10, new int[5]);
        else _ = ds.Train.ReadAllRecords().First();
        await ds.VerifiedAsync();
        Assert.Equal(0, ds.BlocksVerified);
        Assert.Equal(ds.ShardsOpened * (task == TaskKinds.LanguageModel ? 1 : 3), ds.FilesVerified);

        // Altered anywhere (its last byte, never read): the whole-file check finds it.
        var first = expected.Manifest.Train.Shards[0].Tokens;
        var path = Path.Combine(dataset, first.Name);
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x01;
        File.WriteAllBytes(path, bytes);
        using var again = await StoredDataset.OpenAsync(dataset, verification: ShardVerification.Background);
        if (task == TaskKinds.LanguageModel) again.Train.Read(0, new int[5]);
        else _ = again.Train.ReadAllRecords().First();
        var e = await Assert.ThrowsAsync<DatasetException>(() => again.VerifiedAsync());
        Assert.Contains($"dataset {dataset}: {first.Name} does not match its SHA-256 in the manifest ({path}: SHA-256 is ", e.Message);
    }

    [Fact]
    public void A_version_2_manifest_without_or_with_wrong_block_hashes_is_refused_naming_the_file()
    {
        var dataset = Prepared();
        var path = Path.Combine(dataset, DatasetLayout.ManifestFile);
        var good = File.ReadAllText(path);
        void Edit(Action<JsonObject> edit)
        {
            var m = JsonNode.Parse(good)!.AsObject();
            edit(m["train"]!["shards"]![0]!["tokens"]!.AsObject());
            File.WriteAllText(path, m.ToJsonString());
        }
        Edit(t => t.Remove("block_sha256"));
        var e = Assert.Throws<DatasetException>(() => PreparedDataset.Open(dataset));
        Assert.Contains("manifest.json is inconsistent: train-00000.tokens has no block_bytes and block_sha256 (format version 2 records them for every shard file)", e.Message);
        Edit(t => t["block_sha256"]!.AsArray().RemoveAt(0));
        e = Assert.Throws<DatasetException>(() => PreparedDataset.Open(dataset));
        var bytes = new FileInfo(Path.Combine(dataset, "train-00000.tokens")).Length;
        var blocks = DatasetFile.BlockCount(bytes, Block);
        Assert.Contains($"train-00000.tokens lists {blocks - 1} block SHA-256, its {bytes:N0} bytes make {blocks} blocks of 64", e.Message);
        Edit(t => t["block_bytes"] = 0);
        e = Assert.Throws<DatasetException>(() => PreparedDataset.Open(dataset));
        Assert.Contains("train-00000.tokens has block_bytes 0", e.Message);
        Edit(t => t["block_sha256"]![3] = "XYZ");
        e = Assert.Throws<DatasetException>(() => PreparedDataset.Open(dataset));
        Assert.Contains("train-00000.tokens block 3's SHA-256 \"XYZ\" is not 64 lowercase hex digits", e.Message);
    }

    [Fact]
    public void Opened_eagerly_with_verify_every_block_is_checked_against_its_sha256_too()
    {
        var dataset = Prepared();
        var path = Path.Combine(dataset, DatasetLayout.ManifestFile);
        var m = Manifest(dataset);
        // The whole file's SHA-256 still right, block 1's another (a manifest altered by hand): what a job would check.
        m["train"]!["shards"]![0]!["tokens"]!["block_sha256"]![1] = new string('0', 64);
        File.WriteAllText(path, m.ToJsonString());
        using (PreparedDataset.Open(dataset, verify: false)) { }
        var e = Assert.Throws<DatasetException>(() => PreparedDataset.Open(dataset));
        Assert.Contains($"dataset {dataset}: train-00000.tokens block 1 (bytes 64-127) does not match its SHA-256 in the manifest: it was altered after preparation", e.Message);
    }

    [Fact]
    public async Task A_version_this_dtrain_does_not_know_is_refused_naming_it()
    {
        var dataset = Prepared();
        var path = Path.Combine(dataset, DatasetLayout.ManifestFile);
        var m = Manifest(dataset);
        m["version"] = 3;
        File.WriteAllText(path, m.ToJsonString());
        var e = await Assert.ThrowsAsync<DatasetException>(() => StoredDataset.OpenAsync(dataset));
        Assert.Contains("manifest.json is of format version 3, which this dtrain does not know (it reads versions 1 to 2)", e.Message);
    }
}
