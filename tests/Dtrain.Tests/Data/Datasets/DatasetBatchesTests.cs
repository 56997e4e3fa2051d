using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static Dtrain.Tests.Data.Datasets.PrepareTestSupport;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// The batch sources read a prepared split (memory-mapped shards, read across shard boundaries) through the same code
/// as the in-memory arrays: every row of every step, whatever the rank's range, is the same.
/// </summary>
public sealed class DatasetBatchesTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static void AssertSameRows(IBatchSource expected, IBatchSource actual, int steps)
    {
        Assert.Equal(expected.StepsPerEpoch, actual.StepsPerEpoch);
        for (var step = 0; step < steps; step++)
        {
            var at = new StepPosition(step / expected.StepsPerEpoch, step % expected.StepsPerEpoch);
            var rows = expected.RowsAt(at);
            Assert.Equal(rows, actual.RowsAt(at));
            foreach (var (start, count) in new[] { (0, rows), (0, rows / 2), (rows / 2, rows - rows / 2), (1, rows) })
            {
                var e = expected.GetRows(at, start, count);
                var a = actual.GetRows(at, start, count);
                Assert.Equal(e?.Count ?? 0, expected.CountAt(at, start, count));
                Assert.Equal(e?.Count ?? 0, actual.CountAt(at, start, count));
                if (e is null) { Assert.Null(a); continue; }
                Assert.NotNull(a);
                Assert.Equal((e.Rows, e.Width, e.Count), (a.Rows, a.Width, a.Count));
                Assert.Equal(e.Inputs, a.Inputs);
                Assert.Equal(e.Targets, a.Targets);
                Assert.Equal(e.Lengths, a.Lengths);
            }
        }
    }

    [Theory]
    [InlineData(LmSamplingKinds.Stream)]
    [InlineData(LmSamplingKinds.Random)]
    public void A_language_model_reads_the_same_rows_from_a_prepared_split_as_from_memory(string sampling)
    {
        var file = dir.Write("corpus.txt", string.Concat(Enumerable.Range(0, 80).Select(i => $"Line {i}: words and 😀 more {i % 7}\n")));
        var o = Options(Path.Combine(dir.Path, "ds"), [file]);
        DatasetPreparer.Prepare(o);
        var memory = PreparedData.Load(Spec(o, "text", "corpus.txt"), dir.Path);
        using var ds = PreparedDataset.Open(o.Output);
        Assert.True(ds.Train.Entry.Shards.Count > 5, "rows cross shard boundaries");
        AssertSameRows(new LanguageModelBatches(memory.TrainTokens, 6, 20, sampling, 5), new LanguageModelBatches(ds.Train, 6, 20, sampling, 5), 40);
    }

    [Fact]
    public void A_classifier_reads_the_same_rows_from_a_prepared_split_as_from_memory()
    {
        var file = dir.Write("c.jsonl", string.Concat(Enumerable.Range(0, 90).Select(i => $"{{\"text\":\"message {i} {new string('w', i % 17)} end\",\"label\":\"{(i % 3 == 0 ? "spam" : "ham")}\"}}\n")));
        var o = Options(Path.Combine(dir.Path, "ds"), [file]) with { Task = TaskKinds.Classification, Seed = 3 };
        DatasetPreparer.Prepare(o);
        var memory = PreparedData.Load(Spec(o, "jsonl", "c.jsonl"), dir.Path);
        using var ds = PreparedDataset.Open(o.Output);
        Assert.True(ds.Train.Entry.Shards.Count > 3, "records in several shards");
        AssertSameRows(new ClassificationBatches(memory.TrainSequences, memory.TrainLabels, 8, 11), new ClassificationBatches(ds.Train, 8, 11), 30);
    }
}

/// <summary>A dataset opened for a job (<see cref="StoredDataset"/>): what it reads when, and how a dataset changed under a job fails.</summary>
public sealed class StoredDatasetTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    string Prepared()
    {
        var file = dir.Write("corpus.txt", string.Concat(Enumerable.Range(0, 40).Select(i => $"Line {i}: some words {i % 7}\n")));
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]);
        DatasetPreparer.Prepare(o);
        return o.Output;
    }

    [Fact]
    public async Task Opening_reads_only_the_manifest_and_tokenizer_and_reads_equal_the_prepared_ids()
    {
        var root = Prepared();
        using var expected = PreparedDataset.Open(root);
        using var ds = await StoredDataset.OpenAsync(root);
        Assert.Equal(0, ds.ShardsOpened);
        Assert.Equal(expected.Train.Tokens, ((ITokenSequence)ds.Train).Length);
        Assert.Equal(0, ds.ShardsOpened);
        var some = new int[150];
        ds.Train.Read(90, some);
        Assert.Equal(expected.Train.ReadAllTokens()[90..240], some);
        Assert.Equal(3, ds.ShardsOpened);
    }

    [Fact]
    public async Task A_shard_being_fetched_holds_back_only_the_reads_of_that_shard_and_is_fetched_once()
    {
        var root = Prepared();
        using var ds = PreparedDataset.Open(root);
        Assert.True(ds.Train.Entry.Shards.Count >= 3, "several shards");
        using var held = new ManualResetEventSlim();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var opens = new int[ds.Train.Entry.Shards.Count];
        var failOnce = 1;
        var split = new PreparedSplit(ds.Train.Entry, i =>
        {
            Interlocked.Increment(ref opens[i]);
            if (i == 0)
            {
                // A slow download of shard 0.
                started.TrySetResult();
                held.Wait();
            }
            if (i == 2 && Interlocked.Exchange(ref failOnce, 0) == 1) throw new DatasetException(root, "train-00002.tokens", "storage unreachable");
            return ds.Train.Shard(i);
        });
        var first = Task.Run(() => split.Shard(0));
        await started.Task;
        var again = Task.Run(() => split.Shard(0));
        // Another shard of the split is read while shard 0 is still being fetched (the bound only limits a failure).
        var other = Task.Run(() => split.Shard(1));
        var done = await Task.WhenAny(other, Task.Delay(TimeSpan.FromSeconds(60)));
        var otherRead = done == other;
        held.Set();
        Assert.True(otherRead, "a read of shard 1 waited for the fetch of shard 0");
        Assert.Same(ds.Train.Shard(1), await other);
        Assert.Same(await first, await again);
        Assert.Equal(1, opens[0]);
        // An opening that failed is tried again by the next read.
        Assert.Throws<DatasetException>(() => split.Shard(2));
        Assert.Same(ds.Train.Shard(2), split.Shard(2));
        Assert.Equal(2, opens[2]);
        Assert.Equal(3, split.ShardsOpened);
    }

    [Fact]
    public async Task Another_manifest_than_the_job_started_with_is_refused_as_changed_under_the_job()
    {
        var root = Prepared();
        string sha;
        using (var first = await StoredDataset.OpenAsync(root)) sha = first.ManifestSha256;
        var manifest = Path.Combine(root, DatasetLayout.ManifestFile);
        File.WriteAllText(manifest, File.ReadAllText(manifest).Replace("\"seed\": 1", "\"seed\": 2", StringComparison.Ordinal));
        var e = await Assert.ThrowsAsync<DatasetException>(() => StoredDataset.OpenAsync(root, sha));
        Assert.Contains($"dataset {root}: manifest.json changed under the job", e.Message);
    }

    [Fact]
    public async Task An_altered_or_missing_shard_is_refused_by_name_when_read()
    {
        var root = Prepared();
        using var ds = await StoredDataset.OpenAsync(root);
        var shard = Path.Combine(root, "train-00001.tokens");
        var bytes = File.ReadAllBytes(shard);
        bytes[0] ^= 1;
        File.WriteAllBytes(shard, bytes);
        var e = Assert.Throws<DatasetException>(() => ds.Train.Read(100, new int[5]));
        Assert.Contains($"dataset {root}: train-00001.tokens does not match its SHA-256 in the manifest", e.Message);
        File.Delete(Path.Combine(root, "train-00002.tokens"));
        e = Assert.Throws<DatasetException>(() => ds.Train.Read(200, new int[5]));
        Assert.Contains($"dataset {root}: train-00002.tokens is missing", e.Message);
    }

    [Fact]
    public async Task Verified_in_the_background_a_shard_altered_in_place_fails_naming_it_and_a_truncated_one_fails_at_once()
    {
        var root = Prepared();
        using var ds = await StoredDataset.OpenAsync(root, verification: ShardVerification.Background);
        var shard = Path.Combine(root, "train-00001.tokens");
        var bytes = File.ReadAllBytes(shard);
        // Same size, other bytes: only the SHA-256 tells.
        bytes[0] ^= 1;
        File.WriteAllBytes(shard, bytes);
        var some = new int[5];
        // The read does not wait for the check (the ids read are the altered file's).
        ds.Train.Read(100, some);
        var e = await Assert.ThrowsAsync<DatasetException>(() => ds.VerifiedAsync());
        // Format version 2: the block read (the shard's only one here) is checked, named with its bytes.
        Assert.Contains($"dataset {root}: train-00001.tokens block 0 (bytes 0-{bytes.Length - 1}) does not match its SHA-256 in the manifest ({shard}: SHA-256 is ", e.Message);
        Assert.Contains("the dataset changed under the job", e.Message);
        Assert.Equal(e.Message, Assert.Throws<DatasetException>(ds.ThrowIfCorrupt).Message);
        // A truncated shard fails when it is opened, naming it.
        var third = Path.Combine(root, "train-00002.tokens");
        File.WriteAllBytes(third, File.ReadAllBytes(third)[..10]);
        e = Assert.Throws<DatasetException>(() => ds.Train.Read(200, some));
        Assert.Contains($"dataset {root}: train-00002.tokens is truncated: 10 bytes", e.Message);
    }

    [Fact]
    public async Task Verified_in_the_background_the_blocks_read_are_checked_and_match()
    {
        var root = Prepared();
        using var expected = PreparedDataset.Open(root);
        using var ds = await StoredDataset.OpenAsync(root, verification: ShardVerification.Background);
        var some = new int[150];
        ds.Train.Read(90, some);
        Assert.Equal(expected.Train.ReadAllTokens()[90..240], some);
        await ds.VerifiedAsync();
        // One block per shard here (8 MiB blocks): each shard read had its block checked, no file whole.
        Assert.Equal(ds.ShardsOpened, ds.BlocksVerified);
        Assert.Equal(0, ds.FilesVerified);
        ds.ThrowIfCorrupt();
    }

    [Fact]
    public async Task S3_unreachable_is_refused_naming_the_manifest_uri_after_the_retries()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var options = new Dtrain.Data.Storage.S3StoreOptions
        {
            Endpoint = new Uri($"http://127.0.0.1:{port}"), Region = "us-east-1",
            Credentials = new Amazon.Runtime.BasicAWSCredentials("key", "secret"), CacheDirectory = Path.Combine(dir.Path, "cache"),
            Retry = new Dtrain.Data.Storage.StoreRetryPolicy { MaxAttempts = 2, BaseDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(20) },
        };
        var e = await Assert.ThrowsAsync<DatasetException>(() => StoredDataset.OpenAsync("s3://bucket/nowhere", s3: options));
        Assert.StartsWith("dataset s3://bucket/nowhere: manifest.json ", e.Message);
        Assert.Contains("unreachable", e.Message);
    }
}
