using System.Text.RegularExpressions;
using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Tests.Data.Datasets;
using Dtrain.Tests.Support;
using Dtrain.Specs;

namespace Dtrain.Tests.Data.Storage;

/// <summary>
/// A worker's <see cref="StoredDataset"/> from S3 (<see cref="ShardVerification.Background"/>, the real S3 test server):
/// a read fetches only the blocks it touches, not the whole shard (counted in the server's own log), and reads the
/// prepared ids (a classifier's records and labels too). Format version 2: each block fetched is checked against its
/// SHA-256 in the manifest as it arrives and nothing else is fetched, ever; a block changed after preparation fails the
/// read that needs it, naming the shard, its URI and the block. Version 1: the shard's SHA-256 is checked afterwards by
/// reading it whole through the same cache, and an object changed after preparation fails that check naming the shard and its URI.
/// </summary>
public sealed class S3RangedShardTests : IDisposable
{
    const int Block = 1024;

    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>A language-model dataset (char: 1-byte ids) of a few shards of 16 KiB (16 blocks each, their hashes in the manifest).</summary>
    string Prepared()
    {
        var text = string.Concat(Enumerable.Range(0, 2500).Select(i => $"Line {i}: some words {i % 13} and {i % 7}\n"));
        var file = dir.Write("corpus.txt", text);
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]) with { ShardTokens = 16384, ChunkChars = 4096, BlockBytes = Block };
        DatasetPreparer.Prepare(o);
        return o.Output;
    }

    static async Task<string> UploadAsync(S3TestServer server, string dataset, string cache)
    {
        var uri = $"s3://{server.Bucket}/datasets/lm";
        using var upload = new S3DatasetStore(uri, server.Options(cache));
        await upload.UploadDirectoryAsync(dataset, [DatasetLayout.ManifestFile]);
        return uri;
    }

    /// <summary>The blocks of <paramref name="name"/> the server was asked for (ranged GETs).</summary>
    static HashSet<long> BlocksFetched(S3TestServer server, string name) =>
        [.. server.Log.Where(l => l.StartsWith("s3-server: GET ", StringComparison.Ordinal) && l.Contains("/" + name + " ", StringComparison.Ordinal))
            .Select(l => Regex.Match(l, @"range=bytes=(\d+)-")).Where(m => m.Success).Select(m => long.Parse(m.Groups[1].Value) / Block)];

    [S3Fact]
    public async Task A_worker_reads_only_the_blocks_its_rows_touch_checks_each_as_it_arrives_and_fetches_nothing_more()
    {
        var dataset = Prepared();
        using var expected = PreparedDataset.Open(dataset);
        var first = expected.Manifest.Train.Shards[0];
        Assert.Equal(Block, first.Tokens.BlockBytes);
        var blocks = (first.Tokens.Bytes + Block - 1) / Block;
        Assert.True(blocks >= 8, $"{first.Tokens.Name} is {first.Tokens.Bytes} bytes: {blocks} blocks");
        var width = first.Tokens.Bytes / first.TokenCount;
        Assert.Equal(blocks, first.Tokens.BlockSha256!.Count);
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var uri = await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache"));
        // The store's own block size differs: a file with block hashes is read by the manifest's blocks.
        var options = server.Options(Path.Combine(dir.Path, "cache")) with { BlockBytes = 4096, ReadAheadBlocks = 1 };

        using var ds = await StoredDataset.OpenAsync(uri, s3: options, verification: ShardVerification.Background);
        var (middle, third) = ReadAStepsRows(ds, expected, first);
        // What the job's last step waits for: nothing is left to fetch.
        await ds.VerifiedAsync();
        Assert.Equal(0, ds.FilesVerified);
        await server.FlushLogAsync();
        var fetched = BlocksFetched(server, first.Tokens.Name);
        Assert.True(fetched.SetEquals([middle * width / Block, ((middle + 100) * width - 1) / Block]),
            $"{first.Tokens.Name}: blocks {string.Join(", ", fetched.Order())} of {blocks} fetched:\n{string.Join('\n', server.Log)}");
        Assert.Equal([0L], BlocksFetched(server, expected.Manifest.Train.Shards[2].Tokens.Name));
        Assert.Empty(BlocksFetched(server, expected.Manifest.Train.Shards[1].Tokens.Name));
        // Each block was fetched once, as one ranged GET of the manifest's block.
        Assert.Equal(fetched.Count, server.Log.Count(l => l.StartsWith("s3-server: GET ", StringComparison.Ordinal) && l.Contains("/" + first.Tokens.Name + " ", StringComparison.Ordinal)));
    }

    [S3Fact]
    public async Task A_version_1_dataset_is_read_by_the_blocks_its_rows_touch_and_checked_whole_in_the_background()
    {
        var dataset = Prepared();
        PrepareTestSupport.AsVersion1(dataset);
        using var expected = PreparedDataset.Open(dataset);
        Assert.True(expected.Manifest.Train.Shards.Count >= 3, $"{expected.Manifest.Train.Shards.Count} shards");
        var first = expected.Manifest.Train.Shards[0];
        var blocks = (first.Tokens.Bytes + Block - 1) / Block;
        Assert.True(blocks >= 12, $"{first.Tokens.Name} is {first.Tokens.Bytes} bytes: {blocks} blocks");
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var uri = await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache"));
        var options = server.Options(Path.Combine(dir.Path, "cache")) with { BlockBytes = Block, ReadAheadBlocks = 1 };

        using var ds = await StoredDataset.OpenAsync(uri, s3: options, verification: ShardVerification.Background);
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ds.RemoteChecksHeld = held;
        Assert.Equal(DatasetLayout.Uint8, expected.Manifest.TokenDtype);
        // 100 ids (100 bytes) from the middle of shard 0, and 100 from the start of shard 2: what a step's rows are.
        var (middle, third) = ReadAStepsRows(ds, expected, first);
        Assert.Equal(2, ds.ShardsOpened);
        await server.FlushLogAsync();

        // Only the block(s) read (nothing read ahead for scattered rows), out of 16: opening a shard no longer downloads it whole.
        var fetched = BlocksFetched(server, first.Tokens.Name);
        Assert.True(fetched.SetEquals([middle / Block, (middle + 99) / Block]),
            $"{first.Tokens.Name}: blocks {string.Join(", ", fetched.Order())} of {blocks} fetched:\n{string.Join('\n', server.Log)}");
        Assert.Equal([0L], BlocksFetched(server, expected.Manifest.Train.Shards[2].Tokens.Name));
        Assert.Empty(BlocksFetched(server, expected.Manifest.Train.Shards[1].Tokens.Name));
        Assert.Equal(0, ds.FilesVerified);

        // Released, the checks read both opened shards whole (the blocks not read yet fetched then) and match.
        held.SetResult();
        await ds.VerifiedAsync();
        Assert.Equal(2, ds.FilesVerified);
        await server.FlushLogAsync();
        Assert.Equal(blocks, BlocksFetched(server, first.Tokens.Name).Count);
        Assert.Empty(BlocksFetched(server, expected.Manifest.Train.Shards[1].Tokens.Name));
    }

    [S3Fact]
    public async Task A_classifier_reads_every_record_and_label_by_ranges_as_prepared_and_the_checks_match()
    {
        var file = dir.Write("c.jsonl", string.Concat(Enumerable.Range(0, 90).Select(i => $"{{\"text\":\"message {i} {new string('w', i % 17)} end\",\"label\":\"{(i % 3 == 0 ? "spam" : "ham")}\"}}\n")));
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]) with { Task = TaskKinds.Classification, Seed = 3, BlockBytes = 64 };
        DatasetPreparer.Prepare(o);
        using var expected = PreparedDataset.Open(o.Output);
        Assert.True(expected.Train.Entry.Shards.Count > 3, "records in several shards");
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var uri = await UploadAsync(server, o.Output, Path.Combine(dir.Path, "upload-cache"));
        var options = server.Options(Path.Combine(dir.Path, "cache")) with { BlockBytes = 64 };
        using var ds = await StoredDataset.OpenAsync(uri, s3: options, verification: ShardVerification.Background);
        var records = ds.Train.ReadAllRecords().ToList();
        Assert.Equal(expected.Train.ReadAllRecords().Select(r => (string.Join(",", r.Ids), r.Label)), records.Select(r => (string.Join(",", r.Ids), r.Label)));
        Assert.Equal(expected.Validation.ReadAllRecords().Select(r => r.Label), ds.Validation.ReadAllRecords().Select(r => r.Label));
        await ds.VerifiedAsync();
        // Format version 2: every block was checked as it arrived (tokens, offsets and labels), none read again whole.
        Assert.Equal(0, ds.FilesVerified);
    }

    [S3Fact]
    public async Task A_block_changed_after_preparation_fails_the_read_that_fetches_it_naming_the_shard_its_uri_and_the_block()
    {
        var dataset = Prepared();
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var uri = await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache"));
        using var expected = PreparedDataset.Open(dataset);
        var shard = expected.Manifest.Train.Shards[1];
        // The same size, other bytes in the shard's last block only (two ids swapped): the manifest does not change.
        var path = Path.Combine(dataset, shard.Tokens.Name);
        SwapLastIds(path);
        await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache-2"));

        var options = server.Options(Path.Combine(dir.Path, "cache")) with { BlockBytes = Block };
        using var ds = await StoredDataset.OpenAsync(uri, s3: options, verification: ShardVerification.Background);
        var start = expected.Manifest.Train.Shards[0].TokenCount;
        var ids = new int[50];
        ds.Train.Read(start, ids);   // shard 1's first ids: their block is unchanged, read and checked
        Assert.Equal(expected.Train.ReadAllTokens().AsSpan((int)start, 50).ToArray(), ids);
        await ds.VerifiedAsync();    // nothing else is checked: the changed block was never read
        var last = (shard.Tokens.Bytes - 1) / Block;
        var e = Assert.Throws<DatasetException>(() => ds.Train.Read(start + shard.TokenCount - 50, ids));
        Assert.StartsWith($"dataset {uri}: {shard.Tokens.Name} block {last} (bytes {last * Block}-{shard.Tokens.Bytes - 1}) does not match its SHA-256 in the manifest (SHA-256 is ", e.Message);
        Assert.EndsWith($"expected {shard.Tokens.BlockSha256![(int)last]}) ({uri}/{shard.Tokens.Name}): the dataset changed under the job", e.Message);
        // Not cached: read again, it is fetched and refused again.
        Assert.Equal(e.Message, Assert.Throws<DatasetException>(() => ds.Train.Read(start + shard.TokenCount - 50, ids)).Message);
        await server.FlushLogAsync();
        Assert.Equal(2, server.Log.Count(l => l.StartsWith("s3-server: GET ", StringComparison.Ordinal) && l.Contains($"/{shard.Tokens.Name} ", StringComparison.Ordinal) && l.Contains($"range=bytes={last * Block}-", StringComparison.Ordinal)));
    }

    [S3Fact]
    public async Task A_version_1_shard_object_changed_after_preparation_fails_the_background_check_naming_the_shard_and_its_uri()
    {
        var dataset = Prepared();
        PrepareTestSupport.AsVersion1(dataset);
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var uri = await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache"));
        using var expected = PreparedDataset.Open(dataset);
        var shard = expected.Manifest.Train.Shards[1].Tokens;
        // The same size, other bytes (two ids swapped far from where the job reads): the manifest does not change.
        var path = Path.Combine(dataset, shard.Name);
        SwapLastIds(path);
        await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache-2"));

        var options = server.Options(Path.Combine(dir.Path, "cache")) with { BlockBytes = Block };
        using var ds = await StoredDataset.OpenAsync(uri, s3: options, verification: ShardVerification.Background);
        var ids = new int[50];
        ds.Train.Read(expected.Manifest.Train.Shards[0].TokenCount, ids);   // shard 1's first ids: unchanged, read
        var e = await Assert.ThrowsAsync<DatasetException>(() => ds.VerifiedAsync());
        Assert.Contains($"dataset {uri}: {shard.Name} does not match its SHA-256 in the manifest ({uri}/{shard.Name}: SHA-256 is ", e.Message);
        Assert.Contains("the dataset changed under the job", e.Message);
        var again = Assert.Throws<DatasetException>(ds.ThrowIfCorrupt);
        Assert.Equal(e.Message, again.Message);
    }

    /// <summary>Other bytes of the same size at the end of the file (its last two pairs of bytes swapped, or its last byte flipped when they are equal): a change only the hashes see.</summary>
    static void SwapLastIds(string path)
    {
        var bytes = File.ReadAllBytes(path);
        (bytes[^2], bytes[^1], bytes[^4], bytes[^3]) = (bytes[^4], bytes[^3], bytes[^2], bytes[^1]);
        if (bytes.AsSpan().SequenceEqual(File.ReadAllBytes(path))) bytes[^1] ^= 1;
        File.WriteAllBytes(path, bytes);
    }

    /// <summary>What a step's rows read: 100 ids from the middle of shard 0 and 100 from the start of shard 2, checked against the local dataset; returns where they start.</summary>
    static (long Middle, long Third) ReadAStepsRows(StoredDataset ds, PreparedDataset expected, DatasetShard first)
    {
        var middle = first.TokenCount / 2;
        var ids = new int[100];
        ds.Train.Read(middle, ids);
        Assert.Equal(expected.Train.ReadAllTokens().AsSpan((int)middle, 100).ToArray(), ids);
        var third = expected.Train.Entry.Shards.Take(2).Sum(s => s.TokenCount);
        ds.Train.Read(third, ids);
        Assert.Equal(expected.Train.ReadAllTokens().AsSpan((int)third, 100).ToArray(), ids);
        return (middle, third);
    }
}
