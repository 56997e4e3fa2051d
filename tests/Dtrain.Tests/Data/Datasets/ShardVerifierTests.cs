using System.Security.Cryptography;
using Dtrain.Data.Datasets;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// The background SHA-256 checks of a worker's shards (<see cref="ShardVerifier"/>), on real files: hurried, the checks
/// left (and the file being read) go on at the caller's priority where the low-priority thread left them, and still
/// verify every file and name the one that does not match.
/// </summary>
public sealed class ShardVerifierTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    DatasetFile Write(string name, int bytes, int seed)
    {
        var data = new byte[bytes];
        new Random(seed).NextBytes(data);
        File.WriteAllBytes(Path.Combine(dir.Path, name), data);
        return new DatasetFile(name, bytes, Convert.ToHexStringLower(SHA256.HashData(data)));
    }

    [Fact]
    public async Task Blocks_are_checked_each_once_whenever_the_hurry_falls_and_an_altered_one_is_named_with_its_bytes()
    {
        // Blocks of 3 MiB (the verifier reads 1 MiB at a time, so a hurry can fall inside a block), the last one short.
        const int block = 3 << 20;
        var data = new byte[4 * block + 12345];
        new Random(7).NextBytes(data);
        var path = Path.Combine(dir.Path, "train-00000.tokens");
        File.WriteAllBytes(path, data);
        var file = new DatasetFile("train-00000.tokens", data.Length, Convert.ToHexStringLower(SHA256.HashData(data)))
        {
            BlockBytes = block,
            BlockSha256 = [.. data.Chunk(block).Select(b => Convert.ToHexStringLower(SHA256.HashData(b)))],
        };
        using var verifier = new ShardVerifier("ds", name => Path.Combine(dir.Path, name));
        foreach (var b in new long[] { 4, 1, 3, 1 }) verifier.EnqueueBlock(file, b, path);
        verifier.Hurry();
        await verifier.Idle;
        Assert.Null(verifier.Failure);
        Assert.Equal(3, verifier.BlocksVerified);
        Assert.Equal(0, verifier.Verified);
        // Block 2 altered on disk (blocks 0 and 2 were never given): checked now, named with its bytes.
        data[2 * block + 5] ^= 1;
        File.WriteAllBytes(path, data);
        verifier.EnqueueBlock(file, 2, path);
        await verifier.Idle;
        var failure = Assert.IsType<DatasetException>(verifier.Failure);
        Assert.Equal("train-00000.tokens", failure.File);
        Assert.StartsWith($"block 2 (bytes {2 * block}-{3 * block - 1}) does not match its SHA-256 in the manifest ({path}: SHA-256 is ", failure.Problem);
        Assert.Equal(3, verifier.BlocksVerified);
    }

    [Fact]
    public async Task Hurried_the_checks_left_run_at_the_callers_priority_and_still_check_every_file_and_name_the_altered_one()
    {
        var files = Enumerable.Range(0, 3).Select(i => Write($"train-0000{i}.tokens", 6 << 20, i)).ToList();
        var altered = Write("train-00003.tokens", 1 << 20, 3);
        using var verifier = new ShardVerifier("ds", name => Path.Combine(dir.Path, name));
        foreach (var f in files) verifier.Enqueue(f, Path.Combine(dir.Path, f.Name));
        Assert.False(verifier.Hurried);
        // Wherever the low-priority thread is (before, in or after a file), the rest goes on at this thread's priority.
        verifier.Hurry();
        Assert.True(verifier.Hurried);
        await verifier.Idle;
        Assert.Null(verifier.Failure);
        Assert.Equal(3, verifier.Verified);
        if (OperatingSystem.IsLinux())
        {
            var threads = verifier.ThreadIds;
            Assert.Contains(threads, t => !t.Low);
            var mine = Nice("thread-self");
            foreach (var (id, low) in threads)
                if (Directory.Exists($"/proc/self/task/{id}"))
                    Assert.Equal(low ? 19 : mine, Nice($"self/task/{id}"));
        }
        // A file given after the hurry is checked too, and a mismatch names it.
        var bytes = File.ReadAllBytes(Path.Combine(dir.Path, altered.Name));
        bytes[^1] ^= 1;
        File.WriteAllBytes(Path.Combine(dir.Path, altered.Name), bytes);
        verifier.Enqueue(altered, Path.Combine(dir.Path, altered.Name));
        await verifier.Idle;
        var failure = Assert.IsType<DatasetException>(verifier.Failure);
        Assert.Equal("train-00003.tokens", failure.File);
        Assert.Contains("does not match its SHA-256 in the manifest", failure.Problem);
        Assert.Equal(3, verifier.Verified);
    }

    [Fact]
    public async Task Not_hurried_the_checks_run_at_the_lowest_priority()
    {
        var file = Write("train-00000.tokens", 1 << 20, 7);
        using var verifier = new ShardVerifier("ds", name => Path.Combine(dir.Path, name));
        verifier.Enqueue(file, Path.Combine(dir.Path, file.Name));
        await verifier.Idle;
        Assert.Equal(1, verifier.Verified);
        if (!OperatingSystem.IsLinux()) return;
        // Idle, the thread waits for more files: still there, at nice 19.
        var (id, low) = Assert.Single(verifier.ThreadIds);
        Assert.True(low);
        Assert.Equal(19, Nice($"self/task/{id}"));
    }

    /// <summary>The nice value of /proc/<paramref name="task"/> (field 19 of its stat).</summary>
    static int Nice(string task)
    {
        var stat = File.ReadAllText($"/proc/{task}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[19 - 3], System.Globalization.CultureInfo.InvariantCulture);
    }
}
