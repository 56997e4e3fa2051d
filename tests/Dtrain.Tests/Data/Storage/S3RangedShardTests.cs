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
/// prepared ids (a classifier's records and labels too); the shard's SHA-256 is checked afterwards by reading it whole
/// through the same cache; an object
/// changed after preparation fails that check naming the shard and its URI.
/// </summary>
public sealed class S3RangedShardTests : IDisposable
{
    const int Block = 1024;

    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>A language-model dataset (char: 1-byte ids) of a few shards of 16 KiB (16 blocks each).</summary>
    string Prepared()
    {
        var text = string.Concat(Enumerable.Range(0, 2500).Select(i => $"Line {i}: some words {i % 13} and {i % 7}\n"));
        var file = dir.Write("corpus.txt", text);
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]) with { ShardTokens = 16384, ChunkChars = 4096 };
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
    public async Task A_worker_reads_only_the_blocks_its_rows_touch_and_checks_the_whole_shard_in_the_background()
    {
        var dataset = Prepared();
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
        var middle = first.TokenCount / 2;
        var ids = new int[100];
        ds.Train.Read(middle, ids);
        Assert.Equal(expected.Train.ReadAllTokens().AsSpan((int)middle, 100).ToArray(), ids);
        var third = expected.Train.Entry.Shards.Take(2).Sum(s => s.TokenCount);
        ds.Train.Read(third, ids);
        Assert.Equal(expected.Train.ReadAllTokens().AsSpan((int)third, 100).ToArray(), ids);
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
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]) with { Task = TaskKinds.Classification, Seed = 3 };
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
        Assert.Equal(3 * ds.ShardsOpened, ds.FilesVerified);
    }

    [S3Fact]
    public async Task A_shard_object_changed_after_preparation_fails_the_background_check_naming_the_shard_and_its_uri()
    {
        var dataset = Prepared();
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var uri = await UploadAsync(server, dataset, Path.Combine(dir.Path, "upload-cache"));
        using var expected = PreparedDataset.Open(dataset);
        var shard = expected.Manifest.Train.Shards[1].Tokens;
        // The same size, other bytes (two ids swapped far from where the job reads): the manifest does not change.
        var path = Path.Combine(dataset, shard.Name);
        var bytes = File.ReadAllBytes(path);
        (bytes[^2], bytes[^1], bytes[^4], bytes[^3]) = (bytes[^4], bytes[^3], bytes[^2], bytes[^1]);
        if (bytes.AsSpan().SequenceEqual(File.ReadAllBytes(path))) bytes[^1] ^= 1;
        File.WriteAllBytes(path, bytes);
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
}
