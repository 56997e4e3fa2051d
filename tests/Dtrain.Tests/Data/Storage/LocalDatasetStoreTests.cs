using System.Security.Cryptography;
using Dtrain.Data.Storage;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Storage;

/// <summary><see cref="LocalDatasetStore"/> on real files, and <see cref="DiskCache"/>'s bound and LRU order.</summary>
public class LocalDatasetStoreTests
{
    [Fact]
    public async Task Files_are_listed_and_read_by_range_with_missing_truncated_and_escaping_names_refused()
    {
        using var tmp = new TempDir();
        var bytes = RandomNumberGenerator.GetBytes(100_000);
        Directory.CreateDirectory(Path.Combine(tmp.Path, "shards"));
        File.WriteAllBytes(Path.Combine(tmp.Path, "shards", "0.bin"), bytes);
        File.WriteAllBytes(Path.Combine(tmp.Path, "empty.bin"), []);
        using var store = (LocalDatasetStore)DatasetStores.Open(tmp.Path);

        Assert.Equal([new StoredFile("empty.bin", 0), new StoredFile("shards/0.bin", 100_000)], await store.ListAsync());
        var range = new byte[500];
        await store.ReadAsync("shards/0.bin", 99_500, range);
        Assert.Equal(bytes.AsSpan(99_500).ToArray(), range);
        await store.ReadAsync("empty.bin", 0, Memory<byte>.Empty);

        var truncated = await Assert.ThrowsAsync<DatasetStorageException>(() => store.ReadAsync("shards/0.bin", 99_999, new byte[2]));
        Assert.Equal($"{Path.Combine(tmp.Path, "shards/0.bin")}: truncated: holds 100000 bytes, bytes 99999..100000 were asked for", truncated.Message);
        var missing = await Assert.ThrowsAsync<DatasetStorageException>(() => store.ReadAsync("shards/1.bin", 0, new byte[1]));
        Assert.Equal($"{Path.Combine(tmp.Path, "shards/1.bin")}: no such file", missing.Message);
        Assert.Contains("'..' path segment", Assert.Throws<ArgumentException>(() => store.UriOf("../etc/passwd")).Message);
        var hash = await Assert.ThrowsAsync<DatasetStorageException>(() => store.LocalFileAsync("shards/0.bin", new string('a', 64)));
        Assert.Contains("SHA-256 is " + Convert.ToHexStringLower(SHA256.HashData(bytes)), hash.Message);
        Assert.Equal("/no/such/dir: no such directory", Assert.Throws<DatasetStorageException>(() => new LocalDatasetStore("/no/such/dir")).Message);
    }

    [Fact]
    public void The_disk_cache_keeps_within_its_capacity_evicting_the_least_recently_used_and_survives_a_restart()
    {
        using var tmp = new TempDir();
        var cache = new DiskCache(tmp.Path, 3_000);
        cache.Put("a", new byte[1_000]);
        cache.Put("b", new byte[1_000]);
        cache.Put("c", new byte[1_000]);
        Assert.NotNull(cache.TryGet("a"));          // a is now the most recently used
        cache.Put("d", new byte[1_000]);            // evicts b
        Assert.Null(cache.TryGet("b"));
        Assert.Equal(3_000, cache.SizeBytes);
        var read = new byte[2];
        cache.Put("e", [1, 2, 3]);                  // evicts c
        Assert.True(cache.TryRead("e", 1, read));
        Assert.Equal(new byte[] { 2, 3 }, read);
        Assert.Null(cache.TryGet("c"));
        Assert.Equal(3, Directory.GetFiles(tmp.Path).Length);

        var again = new DiskCache(tmp.Path, 3_000);
        Assert.Equal(2_003, again.SizeBytes);
        Assert.NotNull(again.TryGet("a"));
        Assert.NotNull(again.TryGet("d"));
        Assert.False(again.TryRead("e", 2, new byte[5]));   // shorter than asked: a miss, dropped
    }
}
