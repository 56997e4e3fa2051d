using System.IO.Compression;
using System.Text;
using System.Text.Json;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using static Dtrain.Tests.Data.Datasets.PrepareTestSupport;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// With more than one thread a language model's token files are hashed on a thread of their own and the sources beside
/// their decoding: the dataset stays byte-identical to one thread's, and a failure still fails the prepare naming the file.
/// </summary>
public sealed class PrepareThreadsTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static string Text(int lines, int seed) => string.Concat(Enumerable.Range(0, lines).Select(i =>
        $"Line {i * seed}: Don't STOP, naïve café — 𝄞 music {(i + seed) % 7} and 😀 faces\r\nÜnïcödé words' end {i % 13}.\n"));

    static byte[] Gzip(byte[] data)
    {
        using var memory = new MemoryStream();
        using (var z = new GZipStream(memory, CompressionLevel.Fastest)) z.Write(data);
        return memory.ToArray();
    }

    static byte[] Zstd(byte[] data)
    {
        using var compressor = new ZstdSharp.Compressor();
        return compressor.Wrap(data).ToArray();
    }

    [Theory]
    [InlineData("char")]
    [InlineData("word")]
    public void One_two_and_three_threads_write_byte_identical_datasets_from_several_sources(string kind)
    {
        var a = dir.WriteBytes("a.txt.gz", Gzip(Encoding.UTF8.GetBytes(Text(3000, 1))));
        var b = dir.WriteBytes("b.txt.zst", Zstd(Encoding.UTF8.GetBytes(Text(2000, 2))));
        var c = dir.Write("c.txt", "\uFEFF" + Text(2500, 3));
        var v = dir.Write("v.txt", Text(700, 4));
        foreach (var validation in new[] { false, true })
        {
            var outputs = new List<string>();
            foreach (var threads in new[] { 1, 2, 3 })
            {
                var output = Path.Combine(dir.Path, $"{kind}-{validation}-{threads}");
                DatasetPreparer.Prepare(Options(output, [a, b, c], validation: validation ? [v] : null) with
                {
                    Tokenizer = new TokenizerSpec { Kind = kind },
                    Threads = threads,
                    ShardTokens = 60_000,
                    BlockBytes = 4096,
                    ChunkChars = 4096,
                });
                outputs.Add(output);
            }
            var files = Directory.GetFiles(outputs[0]).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            Assert.True(files.Count > 5, $"several shards: {string.Join(", ", files)}");
            foreach (var other in outputs.Skip(1)) AssertSameDataset(outputs[0], other, $"{kind} {other}");
            using var ds = PreparedDataset.Open(outputs[^1]);
            Assert.Equal(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(a)), Convert.FromHexString(ds.Manifest.Sources[0].Sha256));
            Assert.Equal(new FileInfo(b).Length, ds.Manifest.Sources[1].Bytes);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void A_source_that_cannot_be_read_while_encoding_on_several_threads_fails_naming_it_and_leaves_no_dataset(int threads)
    {
        var a = dir.Write("a.txt", Text(3000, 1));
        // A gzip header, then garbage: read first in the encoding pass (a --validation source is not counted).
        var bad = dir.WriteBytes("bad.txt.gz", [.. Gzip(Encoding.UTF8.GetBytes(Text(50, 2)))[..12], .. Enumerable.Range(0, 5000).Select(i => (byte)(i * 7919))]);
        var output = Path.Combine(dir.Path, "out", "ds");
        var e = Assert.Throws<DataFormatException>(() => DatasetPreparer.Prepare(Options(output, [a], validation: [bad]) with
        {
            Threads = threads,
            ShardTokens = 50_000,
            ChunkChars = 4096,
        }));
        Assert.Contains("bad.txt.gz", e.Message);
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(dir.Path, "out"))); // no temporary directory left
    }

    [Fact]
    public void A_split_hashed_behind_is_the_split_hashed_inline()
    {
        var random = new Random(5);
        var pieces = Enumerable.Range(0, 40).Select(i => { var p = new byte[random.Next(0, 9000) * 2]; random.NextBytes(p); return p; }).ToList();
        var splits = new List<string>();
        foreach (var behind in new[] { false, true })
        {
            var directory = Directory.CreateDirectory(Path.Combine(dir.Path, $"behind-{behind}")).FullName;
            using var writer = new DatasetSplitWriter(directory, DatasetLayout.TrainSplit, 2, records: false, shardTokens: 30_000, blockBytes: 5000, hashBehind: behind);
            foreach (var p in pieces) writer.AppendNarrowed(p);
            splits.Add(JsonSerializer.Serialize(writer.Finish(), DatasetLayout.Json));
        }
        Assert.Equal(splits[0], splits[1]);
        Assert.Contains("block_sha256", splits[1]);
        foreach (var f in Directory.GetFiles(Path.Combine(dir.Path, "behind-False")))
            Assert.Equal(File.ReadAllBytes(f), File.ReadAllBytes(Path.Combine(dir.Path, "behind-True", Path.GetFileName(f))));
    }
}
