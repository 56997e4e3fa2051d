using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Dtrain.Data.Datasets;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>The shard writer on real files: what it writes, and how much of it it leaves in the page cache.</summary>
public sealed class DatasetSplitWriterTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Shards_are_written_behind_and_dropped_from_the_page_cache_with_the_bytes_and_hashes_unchanged()
    {
        if (!OperatingSystem.IsLinux()) return; // the page cache hints are Linux's
        const int piece = 1 << 20;
        const long shardTokens = 40L << 20; // 80 MB shards of uint16 ids
        var ids = new byte[piece];
        var expected = new List<IncrementalHash> { IncrementalHash.CreateHash(HashAlgorithmName.SHA256) };
        using var writer = new DatasetSplitWriter(dir.Path, "train", width: 2, records: false, shardTokens);
        long written = 0;
        void Append(int pieces)
        {
            for (var i = 0; i < pieces; i++)
            {
                Random.Shared.NextBytes(ids);
                writer.AppendNarrowed(ids);
                expected[^1].AppendData(ids);
                written += piece;
            }
        }

        Append(48); // 48 MB into the first shard, still open
        var first = Path.Combine(dir.Path, DatasetLayout.ShardName("train", 0, "tokens"));
        var resident = ResidentBytes(first);
        // The windows being written and on their way to the disk, and the stream's 1 MB buffer; before: all 48 MB.
        Assert.True(resident <= 3 * (8 << 20) + piece, $"{resident:N0} of the open shard's {written:N0} bytes in the page cache ({dir.Path})");

        Append(32); // the first shard full (80 MB)
        expected.Add(IncrementalHash.CreateHash(HashAlgorithmName.SHA256));
        Append(20); // 20 MB of the second
        var split = writer.Finish();

        Assert.Equal(2, split.Shards.Count);
        Assert.Equal(written / 2, split.Tokens);
        for (var s = 0; s < 2; s++)
        {
            var file = Path.Combine(dir.Path, split.Shards[s].Tokens.Name);
            // Closed shards are on the disk and out of the page cache (before: all their pages cached).
            Assert.True(ResidentBytes(file) <= piece, $"{ResidentBytes(file):N0} bytes of closed shard {file} in the page cache");
            var hash = Convert.ToHexStringLower(expected[s].GetHashAndReset());
            Assert.Equal(hash, split.Shards[s].Tokens.Sha256);
            Assert.Equal(hash, Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file))));
        }
        Assert.Equal(80L << 20, split.Shards[0].Tokens.Bytes);
        Assert.Equal(20L << 20, split.Shards[1].Tokens.Bytes);
        foreach (var h in expected) h.Dispose();
    }

    /// <summary>How many bytes of <paramref name="path"/> are in the page cache (mincore over a mapping of it).</summary>
    static long ResidentBytes(string path)
    {
        var length = new FileInfo(path).Length;
        if (length == 0) return 0;
        // open(2), not File.OpenHandle: .NET refuses a file the writer holds with FileShare.None (its advisory lock).
        var fd = Native.Open(path, 0 /* O_RDONLY */);
        if (fd < 0) throw new IOException($"open {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        var map = Native.Mmap(IntPtr.Zero, (nuint)length, 1 /* PROT_READ */, 1 /* MAP_SHARED */, fd, 0);
        _ = Native.Close(fd);
        if (map == -1) throw new IOException($"mmap {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        try
        {
            var page = Environment.SystemPageSize;
            var vec = new byte[(length + page - 1) / page];
            if (Native.Mincore(map, (nuint)length, vec) != 0) throw new IOException($"mincore {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
            return vec.LongCount(b => (b & 1) != 0) * page;
        }
        finally
        {
            _ = Native.Munmap(map, (nuint)length);
        }
    }

    static class Native
    {
        [DllImport("libc", EntryPoint = "open", SetLastError = true)]
        public static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", EntryPoint = "close", SetLastError = true)]
        public static extern int Close(int fd);

        [DllImport("libc", EntryPoint = "mmap", SetLastError = true)]
        public static extern IntPtr Mmap(IntPtr addr, nuint length, int prot, int flags, int fd, long offset);

        [DllImport("libc", EntryPoint = "munmap", SetLastError = true)]
        public static extern int Munmap(IntPtr addr, nuint length);

        [DllImport("libc", EntryPoint = "mincore", SetLastError = true)]
        public static extern int Mincore(IntPtr addr, nuint length, byte[] vec);
    }
}
