using System.Text;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using static Dtrain.Tests.Data.Datasets.PrepareTestSupport;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// A language model's uncompressed plain-text sources are read in ranges by the tokenizing threads themselves
/// (TextRanges): the dataset is byte for byte the one the stream path (SourceReader + TextChunker) writes, whatever the
/// range size, thread count, BOMs, CRLFs, surrogate pairs and where the validation cut falls; what the ranges cannot
/// read goes to the stream path, which names the problem.
/// </summary>
public sealed class PrepareRangesTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static string Text(int lines, int seed) => string.Concat(Enumerable.Range(0, lines).Select(i =>
        $"Line {i * seed}: Don't\tSTOP, naïve café — 𝄞 music {(i + seed) % 7} and 😀 faces\r\nÜnïcödé words' end {i % 13}.\r" + (i % 3 == 0 ? "\r\n\r\n" : "\n")));

    /// <summary>Every file of the two datasets, byte for byte (manifest included).</summary>
    static void AssertSameDataset(string expected, string actual, string what)
    {
        var files = Directory.GetFiles(expected).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(files, Directory.GetFiles(actual).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        foreach (var f in files)
            Assert.True(File.ReadAllBytes(Path.Combine(expected, f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(actual, f!))), $"{what}: {f} differs");
    }

    string Prepare(string name, PrepareOptions o)
    {
        var output = Path.Combine(dir.Path, name);
        DatasetPreparer.Prepare(o with { Output = output });
        return output;
    }

    [Theory]
    [InlineData("char")]
    [InlineData("word")]
    public void Ranges_of_any_size_on_any_thread_count_write_the_stream_paths_dataset(string kind)
    {
        var a = dir.Write("a.txt", Text(300, 1));
        var b = dir.Write("b.txt", "\uFEFF" + Text(200, 2) + "\r");   // a BOM, and a "\r" at the very end
        var c = dir.Write("c.txt", "😀" + Text(150, 3) + "𝄞");       // surrogate pairs at both ends
        var v = dir.Write("v.txt", "\uFEFF\r\n" + Text(70, 4));
        foreach (var validation in new[] { false, true })
        {
            var o = Options("", [a, b, c], validation: validation ? [v] : null) with { Tokenizer = new TokenizerSpec { Kind = kind }, ShardTokens = 5_000, BlockBytes = 1000 };
            var logs = new List<string>();
            var stream = Prepare($"{kind}-{validation}-stream", o with { StreamOnly = true });
            foreach (var (rangeBytes, threads) in new[] { (1, 1), (2, 2), (7, 3), (61, 2), (4096, 1), (4096, 2), (1 << 21, 2) })
            {
                var output = Path.Combine(dir.Path, $"{kind}-{validation}-{rangeBytes}-{threads}");
                DatasetPreparer.Prepare(o with { Output = output, RangeBytes = rangeBytes, Threads = threads }, logs.Add);
                AssertSameDataset(stream, output, $"{kind}, validation source {validation}, {rangeBytes}-byte ranges, {threads} thread(s)");
            }
            Assert.Contains(logs, l => l.Contains("read in ranges", StringComparison.Ordinal));
            Assert.DoesNotContain(logs, l => l.Contains("as one stream", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void A_validation_cut_inside_a_surrogate_pair_or_at_a_joining_line_feed_moves_as_the_stream_path_moves_it()
    {
        // Text of surrogate pairs only, in three files: over these fractions the cut falls on every kind of position
        // (before a pair, inside one, on the "\n" that joins two files).
        var a = dir.Write("a.txt", string.Concat(Enumerable.Repeat("😀𝄞", 9)));
        var b = dir.Write("b.txt", "x😀");
        var c = dir.Write("c.txt", string.Concat(Enumerable.Repeat("𝄞", 5)) + "\r\n");
        for (var percent = 3; percent <= 60; percent += 3)
        {
            var o = Options("", [a, b, c]) with { ValidationFraction = percent / 100.0, ShardTokens = 7, BlockBytes = 5 };
            var stream = Prepare($"cut-{percent}-stream", o with { StreamOnly = true });
            foreach (var threads in new[] { 1, 2 })
                AssertSameDataset(stream, Prepare($"cut-{percent}-{threads}", o with { RangeBytes = 3, Threads = threads }), $"{percent} % held out, {threads} thread(s)");
        }
    }

    [Fact]
    public void A_source_the_ranges_cannot_read_goes_to_the_stream_path_which_names_the_problem()
    {
        var good = dir.Write("good.txt", Text(50, 1));
        var invalid = dir.WriteBytes("bad.txt", [.. Encoding.UTF8.GetBytes("line one\nline two\n"), 0xC3, 0x28, .. Encoding.UTF8.GetBytes(" more\n")]);
        var blank = dir.Write("blank.txt", " \r\n\t\u3000\n");
        foreach (var (bad, message) in new[] { (invalid, "bad.txt:3: invalid UTF-8 byte sequence at byte offset 18"), (blank, "blank.txt: file is empty") })
        {
            var stream = Assert.Throws<DataFormatException>(() => DatasetPreparer.Prepare(Options(Path.Combine(dir.Path, "out-stream"), [good, bad]) with { StreamOnly = true }));
            Assert.EndsWith(message, stream.Message);
            foreach (var threads in new[] { 1, 2 })
            {
                var logs = new List<string>();
                var e = Assert.Throws<DataFormatException>(() => DatasetPreparer.Prepare(Options(Path.Combine(dir.Path, $"out-{threads}"), [good, bad]) with { Threads = threads }, logs.Add));
                Assert.Equal(stream.Message, e.Message);
                Assert.Contains(logs, l => l.Contains("as one stream", StringComparison.Ordinal));
                Assert.False(Directory.Exists(Path.Combine(dir.Path, $"out-{threads}")));
            }
        }
    }

    [Fact]
    public void Text_with_non_ascii_whitespace_around_its_only_content_is_read_in_ranges()
    {
        Assert.False(TextRanges.HasContent("\u3000 \u00A0\r\n"u8.ToArray()));
        Assert.True(TextRanges.HasContent(Encoding.UTF8.GetBytes("\u3000 \u00A0\r\n中\u3000")));
        Assert.True(TextRanges.HasContent(" x "u8));
        var cjk = dir.Write("cjk.txt", "\u3000" + string.Concat(Enumerable.Repeat("长短期记忆网络，门控循环单元。", 40)));
        var logs = new List<string>();
        var o = Options("", [cjk]);
        var stream = Prepare("cjk-stream", o with { StreamOnly = true });
        var ranges = Path.Combine(dir.Path, "cjk-ranges");
        DatasetPreparer.Prepare(o with { Output = ranges, Threads = 2 }, logs.Add);
        AssertSameDataset(stream, ranges, "CJK text");
        Assert.DoesNotContain(logs, l => l.Contains("as one stream", StringComparison.Ordinal));
    }

    [Fact]
    public void A_source_changed_after_its_ranges_were_planned_fails_naming_it()
    {
        var a = dir.Write("a.txt", "one\r\ntwo\r\nthree\r\n");
        var train = SourceFiles.Expand([a], DatasetLayout.TrainSplit, null);
        using var ranges = TextRanges.Plan(train, [], word: false, threads: 1, rangeBytes: 4, CancellationToken.None)!;
        Assert.NotNull(ranges);
        Assert.Equal("one\ntwo\nthree\n".Length, ranges.TrainChars);
        File.WriteAllText(a, "one\n\ntwo\n\nthree\n\n"); // as long, but no "\r\n" left: other characters
        var r = ranges.Ranges[0];
        var bytes = new byte[r.Bytes];
        var text = new char[r.Bytes + 1];
        ranges.Read(r, bytes);
        var e = Assert.Throws<DataFormatException>(() => ranges.Decode(r, bytes, text));
        Assert.Contains("a.txt", e.Message);
        Assert.Contains("changed while it was being prepared", e.Message);
        File.WriteAllText(a, "one");
        var shorter = Assert.Throws<DataFormatException>(() => ranges.Read(ranges.Ranges[^1], new byte[ranges.Ranges[^1].Bytes]));
        Assert.Contains("changed while it was being prepared", shorter.Message);
    }
}
