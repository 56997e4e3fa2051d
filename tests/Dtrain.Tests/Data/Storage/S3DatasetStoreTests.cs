using System.Security.Cryptography;
using Dtrain.Data.Storage;
using Dtrain.Tests.Support;
using Microsoft.Extensions.Time.Testing;

namespace Dtrain.Tests.Data.Storage;

/// <summary>
/// <see cref="S3DatasetStore"/> against a real S3-compatible server (eng/s3-server, started per test on a free loopback
/// port): a directory uploaded (one file multipart) reads back byte for byte as the same directory read through
/// <see cref="LocalDatasetStore"/>; cached blocks are not fetched again (counted in the server's own log); wrong
/// credentials, a missing key or bucket, a truncated read and a changed hash fail at once naming the URI; a server
/// that goes away is retried a bounded number of times, then named.
/// </summary>
public class S3DatasetStoreTests
{
    const int Block = 64 << 10;

    sealed class Scene : IAsyncDisposable
    {
        public readonly TempDir Tmp = new();
        public S3TestServer Server = null!;
        public string Source => Path.Combine(Tmp.Path, "source");
        public string Cache => Path.Combine(Tmp.Path, "cache");
        public string Uri => $"s3://{Server.Bucket}/corpora/moby";

        public static async Task<Scene> StartAsync()
        {
            var scene = new Scene();
            Directory.CreateDirectory(Path.Combine(scene.Tmp.Path, "s3"));
            scene.Server = await S3TestServer.StartAsync(Path.Combine(scene.Tmp.Path, "s3"));
            return scene;
        }

        /// <summary>A dataset-like directory: shards of random bytes (one of them crossing many blocks), an index and a manifest.</summary>
        public Dictionary<string, byte[]> WriteSource(int bigBytes = 5 * Block + 123)
        {
            var files = new Dictionary<string, byte[]>
            {
                ["shards/000000.bin"] = RandomNumberGenerator.GetBytes(bigBytes),
                ["shards/000001.bin"] = RandomNumberGenerator.GetBytes(Block - 1),
                ["index.bin"] = RandomNumberGenerator.GetBytes(100),
                ["empty.bin"] = [],
                ["manifest.json"] = "{\"version\":1}"u8.ToArray(),
            };
            foreach (var (name, bytes) in files)
            {
                var path = Path.Combine(Source, name);
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                File.WriteAllBytes(path, bytes);
            }
            return files;
        }

        public S3DatasetStore Store(Func<S3StoreOptions, S3StoreOptions>? change = null)
        {
            var options = Server.Options(Cache) with { BlockBytes = Block, PartBytes = 5 << 20 };
            return new S3DatasetStore(Uri, change is null ? options : change(options));
        }

        public async Task<S3DatasetStore> UploadedAsync(Func<S3StoreOptions, S3StoreOptions>? change = null)
        {
            using (var uploader = Store(o => o with { CacheDirectory = Path.Combine(Tmp.Path, "uploader-cache") }))
                await uploader.UploadDirectoryAsync(Source, ["manifest.json"]);
            return Store(change);
        }

        public ValueTask DisposeAsync()
        {
            Server.Dispose();
            Tmp.Dispose();
            return ValueTask.CompletedTask;
        }
    }

    [S3Fact]
    public async Task An_uploaded_directory_lists_and_reads_back_exactly_as_the_local_directory_does()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource(bigBytes: 11 << 20);   // > PartBytes (5 MiB): a multipart upload of 3 parts
        using var s3 = await scene.UploadedAsync();
        using var local = new LocalDatasetStore(scene.Source);

        Assert.Equal(await local.ListAsync(), await s3.ListAsync());
        Assert.Equal(["empty.bin", "index.bin", "manifest.json", "shards/000000.bin", "shards/000001.bin"], (await s3.ListAsync()).Select(f => f.Name));
        Assert.Equal(3, scene.Server.Count("PUT", "partNumber="));
        Assert.Contains("manifest.json", scene.Server.Log.Last(l => l.Contains(" PUT ", StringComparison.Ordinal)));   // written last

        var big = files["shards/000000.bin"];
        foreach (var (offset, length) in new[] { (0L, 10), (Block - 5L, 10), (3L * Block + 7, 2 * Block + 11), ((long)big.Length - 9, 9), (1000L, 0) })
        {
            var fromS3 = new byte[length];
            var fromLocal = new byte[length];
            await s3.ReadAsync("shards/000000.bin", offset, fromS3);
            await local.ReadAsync("shards/000000.bin", offset, fromLocal);
            Assert.Equal(big.AsSpan((int)offset, length).ToArray(), fromS3);
            Assert.Equal(fromLocal, fromS3);
        }
        foreach (var (name, bytes) in files)
        {
            Assert.Equal(bytes.Length, await s3.SizeAsync(name));
            var copy = await s3.LocalFileAsync(name, Convert.ToHexStringLower(SHA256.HashData(bytes)));
            Assert.Equal(bytes, File.ReadAllBytes(copy));
            Assert.Equal(Path.Combine(scene.Source, name), await local.LocalFileAsync(name, Convert.ToHexStringLower(SHA256.HashData(bytes))));
        }
    }

    [S3Fact]
    public async Task A_cached_block_is_not_fetched_again_even_by_a_new_store_on_the_same_cache()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource();
        var key = $"/{scene.Server.Bucket}/corpora/moby/shards/000000.bin";
        using (var s3 = await scene.UploadedAsync(o => o with { ReadAheadBlocks = 0 }))
        {
            var first = new byte[100];
            await s3.ReadAsync("shards/000000.bin", Block + 50, first);
            await scene.Server.FlushLogAsync();
            Assert.Equal(1, scene.Server.Count("GET " + key, "range="));
            Assert.Equal(1, s3.GetRequests);

            var again = new byte[100];
            await s3.ReadAsync("shards/000000.bin", Block + 50, again);
            await s3.ReadAsync("shards/000000.bin", Block + 500, new byte[1000]);   // same block
            await scene.Server.FlushLogAsync();
            Assert.Equal(1, scene.Server.Count("GET " + key, "range="));
            Assert.Equal(1, s3.GetRequests);
            Assert.Equal(first, again);
            Assert.Equal(files["shards/000000.bin"].AsSpan(Block + 50, 100).ToArray(), again);
        }
        using (var reopened = scene.Store(o => o with { ReadAheadBlocks = 0 }))
        {
            var bytes = new byte[100];
            await reopened.ReadAsync("shards/000000.bin", Block + 50, bytes);
            await scene.Server.FlushLogAsync();
            Assert.Equal(1, scene.Server.Count("GET " + key, "range="));   // only the HEAD is new
            Assert.Equal(0, reopened.GetRequests);
            Assert.Equal(files["shards/000000.bin"].AsSpan(Block + 50, 100).ToArray(), bytes);
        }
    }

    [S3Fact]
    public async Task A_cache_smaller_than_a_block_still_reads_every_byte_and_stays_within_one_block()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource();
        // Blocks are streamed into the cache and read from there: one larger than the whole cache is kept until the next.
        using var s3 = await scene.UploadedAsync(o => o with { CacheBytes = Block / 2, ReadAheadBlocks = 0 });
        var all = new byte[files["shards/000000.bin"].Length];
        await s3.ReadAsync("shards/000000.bin", 0, all);
        Assert.Equal(files["shards/000000.bin"], all);
        Assert.Equal(6, s3.GetRequests);
        Assert.True(s3.Cache.SizeBytes <= Block, $"{s3.Cache.SizeBytes} bytes cached");
        Assert.Empty(Directory.EnumerateFiles(s3.Cache.Directory, "*.tmp-*"));
    }

    [S3Fact]
    public async Task Read_ahead_fetches_the_next_blocks_so_the_next_read_sends_no_request()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource();
        using var s3 = await scene.UploadedAsync(o => o with { ReadAheadBlocks = 2 });
        await s3.ReadAsync("shards/000000.bin", 0, new byte[Block]);
        await s3.ReadAheadIdleAsync();
        await scene.Server.FlushLogAsync();
        Assert.True(s3.GetRequests == 3, $"{s3.GetRequests} GETs, expected block 0, then 1 and 2 ahead:\n{string.Join('\n', scene.Server.Log)}");
        var next = new byte[2 * Block];
        await s3.ReadAsync("shards/000000.bin", Block, next);   // blocks 1 and 2: already here
        Assert.Equal(files["shards/000000.bin"].AsSpan(Block, 2 * Block).ToArray(), next);
        await s3.ReadAheadIdleAsync();
        await scene.Server.FlushLogAsync();
        // Blocks 3 and 4 were read ahead after that read; each of the five blocks was fetched exactly once.
        Assert.Equal(5, s3.GetRequests);
        for (var block = 0; block < 5; block++)
            Assert.Equal(1, scene.Server.Count("GET ", $"range=bytes={block * Block}-{(block + 1) * Block - 1} "));
    }

    [S3Fact]
    public async Task Wrong_credentials_are_refused_at_once_with_a_message_naming_the_uri_and_the_credentials()
    {
        await using var scene = await Scene.StartAsync();
        scene.WriteSource();
        (await scene.UploadedAsync()).Dispose();
        await scene.Server.FlushLogAsync();
        var before = scene.Server.Count("HEAD");

        using var wrongSecret = scene.Store(o => scene.Server.Options(scene.Cache, secretKey: "not-the-secret") with { BlockBytes = Block });
        var e = await Assert.ThrowsAsync<DatasetStorageException>(() => wrongSecret.ReadAsync("index.bin", 0, new byte[10]));
        Assert.Equal($"{scene.Uri}/index.bin", e.Uri);
        // A HEAD's refusal has no body, so no error code: the status says it.
        Assert.StartsWith($"{scene.Uri}/index.bin: looking up the object: access refused (", e.Message);
        Assert.Contains("HTTP 403", e.Message);
        Assert.Contains("check the credentials", e.Message);
        Assert.Equal(1, e.Attempts);
        await scene.Server.FlushLogAsync();
        Assert.Equal(before + 1, scene.Server.Count("HEAD"));   // never retried
        var list = await Assert.ThrowsAsync<DatasetStorageException>(() => wrongSecret.ListAsync());
        Assert.StartsWith($"{scene.Uri}: listing: access refused (SignatureDoesNotMatch, HTTP 403", list.Message);

        using var wrongKey = scene.Store(o => scene.Server.Options(scene.Cache, accessKey: "AKNOBODY") with { BlockBytes = Block });
        var listing = await Assert.ThrowsAsync<DatasetStorageException>(() => wrongKey.ListAsync());
        Assert.StartsWith($"{scene.Uri}: listing: access refused (InvalidAccessKeyId, HTTP 403", listing.Message);
    }

    [S3Fact]
    public async Task A_missing_key_or_bucket_and_a_truncated_read_are_named()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource();
        using var s3 = await scene.UploadedAsync();

        var missing = await Assert.ThrowsAsync<DatasetStorageException>(() => s3.ReadAsync("shards/000009.bin", 0, new byte[1]));
        Assert.StartsWith($"{scene.Uri}/shards/000009.bin: looking up the object: no such object", missing.Message);
        Assert.Equal(1, missing.Attempts);

        using var noBucket = new S3DatasetStore("s3://no-such-bucket/x", scene.Server.Options(scene.Cache));
        var bucket = await Assert.ThrowsAsync<DatasetStorageException>(() => noBucket.ListAsync());
        Assert.StartsWith("s3://no-such-bucket/x: listing: no such bucket (NoSuchBucket", bucket.Message);

        var size = files["index.bin"].Length;
        var truncated = await Assert.ThrowsAsync<DatasetStorageException>(() => s3.ReadAsync("index.bin", size - 4, new byte[8]));
        Assert.Equal($"{scene.Uri}/index.bin: truncated: holds {size} bytes, bytes {size - 4}..{size + 3} were asked for", truncated.Message);

        var wrongHash = new string('0', 64);
        var hash = await Assert.ThrowsAsync<DatasetStorageException>(() => s3.LocalFileAsync("index.bin", wrongHash));
        Assert.Equal($"{scene.Uri}/index.bin: SHA-256 is {Convert.ToHexStringLower(SHA256.HashData(files["index.bin"]))}, expected {wrongHash} (the object changed or is corrupt)", hash.Message);
        Assert.Throws<ArgumentException>(() => s3.UriOf("../secret"));
    }

    [S3Fact]
    public async Task A_server_that_goes_away_mid_read_is_retried_a_bounded_number_of_times_then_named()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource();
        using var s3 = await scene.UploadedAsync(o => o with { ReadAheadBlocks = 0 });
        var head = new byte[Block];
        await s3.ReadAsync("shards/000000.bin", 0, head);   // size known, block 0 cached
        Assert.Equal(files["shards/000000.bin"].AsSpan(0, Block).ToArray(), head);

        scene.Server.Kill();
        var before = s3.GetRequests;
        // Block 0 comes from the cache; block 1 needs the server that is gone.
        var e = await Assert.ThrowsAsync<DatasetStorageException>(() => s3.ReadAsync("shards/000000.bin", Block - 10, new byte[20]));
        Assert.Equal($"{scene.Uri}/shards/000000.bin", e.Uri);
        Assert.StartsWith($"{scene.Uri}/shards/000000.bin: reading bytes {Block}..{2 * Block - 1} failed 3 times, giving up: unreachable (", e.Message);
        Assert.Equal(3, e.Attempts);
        Assert.Equal(before + 3, s3.GetRequests);

        // What is cached still reads without the server.
        var cached = new byte[Block];
        await s3.ReadAsync("shards/000000.bin", 0, cached);
        Assert.Equal(head, cached);
    }

    [S3Fact]
    public async Task A_server_that_comes_back_between_attempts_is_read_from_after_one_retry()
    {
        await using var scene = await Scene.StartAsync();
        var files = scene.WriteSource();
        var time = new FakeTimeProvider();
        var retried = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var s3 = await scene.UploadedAsync(o => o with
        {
            ReadAheadBlocks = 0,
            Retry = o.Retry with { Time = time, BaseDelay = TimeSpan.FromSeconds(1), MaxDelay = TimeSpan.FromSeconds(1), OnRetry = (uri, attempt, delay, problem) => retried.TrySetResult($"{uri} {attempt} {delay} {problem}") },
        });
        await s3.ReadAsync("shards/000000.bin", 0, new byte[10]);   // size known, block 0 cached
        scene.Server.Kill();
        var before = s3.GetRequests;

        var read = new byte[20];
        var reading = s3.ReadAsync("shards/000000.bin", Block - 10, read);
        // The first attempt fails (nothing listens) and waits 1 s of the fake clock; the server comes back meanwhile.
        var told = await retried.Task;
        Assert.True(told.StartsWith($"{scene.Uri}/shards/000000.bin 1 00:00:01 reading bytes {Block}..{2 * Block - 1}: unreachable (", StringComparison.Ordinal), told);
        Assert.False(reading.IsCompleted);
        var gone = scene.Server;
        scene.Server = await S3TestServer.RestartAsync(gone, Path.Combine(scene.Tmp.Path, "s3"));
        gone.Dispose();
        // The wait is registered right after OnRetry; advance until the read is done (bounded by steps, not the clock).
        for (var step = 0; !reading.IsCompleted; step++)
        {
            Assert.True(step < 500, "the read did not finish after the server came back");
            time.Advance(TimeSpan.FromSeconds(1));
            await Task.WhenAny(reading, Task.Delay(20));
        }
        await reading;
        Assert.Equal(files["shards/000000.bin"].AsSpan(Block - 10, 20).ToArray(), read);
        Assert.Equal(before + 2, s3.GetRequests);
    }

    [Fact]
    public void Retries_back_off_exponentially_up_to_the_cap()
    {
        var policy = new StoreRetryPolicy { BaseDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(1) };
        Assert.Equal([100, 200, 400, 800, 1000, 1000], Enumerable.Range(1, 6).Select(a => policy.DelayAfter(a).TotalMilliseconds));
    }

    [Fact]
    public void S3_uris_and_the_environment_are_parsed_with_errors_naming_what_is_wrong()
    {
        Assert.Equal(new S3Location("my-bucket", "a/b/"), S3Location.Parse("s3://my-bucket/a/b"));
        Assert.Equal(new S3Location("my-bucket", ""), S3Location.Parse("s3://my-bucket"));
        Assert.Equal("s3://my-bucket/a/b/c.bin", S3Location.Parse("s3://my-bucket/a/b/").UriOf("c.bin"));
        Assert.Contains("\"My_Bucket\" is not a bucket name", Assert.Throws<ArgumentException>(() => S3Location.Parse("s3://My_Bucket/x")).Message);
        Assert.Contains("'..' segment", Assert.Throws<ArgumentException>(() => S3Location.Parse("s3://bucket/a/../b")).Message);

        var env = new Dictionary<string, string>
        {
            ["AWS_ENDPOINT_URL"] = "http://ignored:1", ["DTRAIN_S3_ENDPOINT"] = "http://127.0.0.1:9000", ["AWS_REGION"] = "eu-west-1",
            ["DTRAIN_S3_CACHE_MB"] = "10", ["DTRAIN_S3_MAX_ATTEMPTS"] = "7",
        };
        var options = S3StoreOptions.FromEnvironment(n => env.GetValueOrDefault(n));
        Assert.Equal(new Uri("http://127.0.0.1:9000"), options.Endpoint);
        Assert.Equal("eu-west-1", options.Region);
        Assert.Equal(10_000_000, options.CacheBytes);
        Assert.Equal(7, options.Retry.MaxAttempts);
        Assert.True(options.CreateClient().Config is Amazon.S3.AmazonS3Config { ForcePathStyle: true });
        env["DTRAIN_S3_CACHE_MB"] = "lots";
        Assert.Equal("DTRAIN_S3_CACHE_MB: \"lots\" is not a positive whole number",
            Assert.Throws<ArgumentException>(() => S3StoreOptions.FromEnvironment(n => env.GetValueOrDefault(n))).Message);
        Assert.Contains("unsupported storage scheme \"gs://\"", Assert.Throws<ArgumentException>(() => DatasetStores.Open("gs://b/x")).Message);
    }
}
