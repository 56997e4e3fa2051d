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
            foreach (var (rangeBytes, threads, pieceChars) in new[] { (1, 1, 4), (2, 2, 4), (7, 3, 5), (61, 2, 4), (4096, 1, 7), (4096, 2, 1 << 15), (1 << 21, 2, 33), (1 << 21, 1, 1 << 15) })
            {
                var output = Path.Combine(dir.Path, $"{kind}-{validation}-{rangeBytes}-{threads}-{pieceChars}");
                DatasetPreparer.Prepare(o with { Output = output, RangeBytes = rangeBytes, Threads = threads, PieceChars = pieceChars }, logs.Add);
                AssertSameDataset(stream, output, $"{kind}, validation source {validation}, {rangeBytes}-byte ranges, {threads} thread(s), {pieceChars}-character pieces");
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
            foreach (var (threads, rangeBytes, pieceChars) in new[] { (1, 3, 4), (2, 3, 4), (2, 1 << 21, 4), (1, 1 << 21, 5), (2, 1 << 21, 1 << 15) })
                AssertSameDataset(stream, Prepare($"cut-{percent}-{threads}-{rangeBytes}-{pieceChars}", o with { RangeBytes = rangeBytes, Threads = threads, PieceChars = pieceChars }),
                    $"{percent} % held out, {threads} thread(s), {rangeBytes}-byte ranges, {pieceChars}-character pieces");
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

    [Theory]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(64)]
    public void A_ranges_text_in_pieces_of_any_size_is_the_stream_paths_text(int buffer)
    {
        var content = "\uFEFF" + Text(20, 5) + "\r";
        var a = dir.Write("a.txt", "x");
        var b = dir.Write("b.txt", content);
        var train = SourceFiles.Expand([a, b], DatasetLayout.TrainSplit, null);
        var ranges = TextRanges.Plan(train, [], word: false, threads: 1, rangeBytes: 13, CancellationToken.None)!;
        var joined = new StringBuilder();
        foreach (var r in ranges.Ranges)
        {
            var bytes = new byte[r.Bytes];
            ranges.Read(r, bytes);
            var text = ranges.Text(r, bytes, new char[buffer]);
            var length = 0;
            while (text.Next(out var piece))
            {
                Assert.False(piece.IsEmpty);
                Assert.False(char.IsHighSurrogate(piece[^1]), "a piece ends inside a surrogate pair");
                joined.Append(piece);
                length += piece.Length;
            }
            Assert.Equal(r.Chars, length);
        }
        Assert.Equal("x\n" + content[1..].Replace("\r\n", "\n", StringComparison.Ordinal), joined.ToString());
        Assert.Equal(joined.Length, ranges.TrainChars);
    }

    [Fact]
    public async Task A_directory_of_more_files_than_the_process_may_open_at_once_is_prepared_in_ranges()
    {
        // 600 files, the CLI under `ulimit -n 300`: the ranges open a file for each read, never all of them at once.
        var corpus = Directory.CreateDirectory(Path.Combine(dir.Path, "corpus")).FullName;
        for (var i = 0; i < 600; i++) File.WriteAllText(Path.Combine(corpus, $"part-{i:D4}.txt"), Text(2, i + 1));
        var output = Path.Combine(dir.Path, "many");
        var psi = CliRunner.StartInfo(dir.Path, null, "prepare", corpus, "-o", output, "--threads", "2");
        var command = new List<string> { psi.FileName };
        command.AddRange(psi.ArgumentList);
        psi.FileName = "bash";
        psi.ArgumentList.Clear();
        foreach (var a in (string[])["-c", "ulimit -n 300 && exec \"$@\"", "bash", .. command]) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using (var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3))) await p.WaitForExitAsync(timeout.Token);
        var errors = await stderr;
        Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {errors}");
        Assert.Contains("read in ranges", errors);
        using var ds = PreparedDataset.Open(output);
        Assert.Equal(600, ds.Manifest.Sources.Count);
        var stream = Prepare("many-stream", Options("", [corpus]) with { StreamOnly = true, ShardTokens = 1L << 26, ChunkChars = TextChunker.DefaultChunkChars });
        AssertSameDataset(stream, output, "600 files");
    }

    [Fact]
    public void A_source_changed_after_its_ranges_were_planned_fails_naming_it()
    {
        var a = dir.Write("a.txt", "one\r\ntwo\r\nthree\r\n");
        var train = SourceFiles.Expand([a], DatasetLayout.TrainSplit, null);
        var ranges = TextRanges.Plan(train, [], word: false, threads: 1, rangeBytes: 4, CancellationToken.None)!;
        Assert.NotNull(ranges);
        Assert.Equal("one\ntwo\nthree\n".Length, ranges.TrainChars);
        File.WriteAllText(a, "one\n\ntwo\n\nthree\n\n"); // as long, but no "\r\n" left: other characters
        var r = ranges.Ranges[0];
        var bytes = new byte[r.Bytes];
        ranges.Read(r, bytes);
        var e = Assert.Throws<DataFormatException>(() =>
        {
            var text = ranges.Text(r, bytes, new char[4]);
            while (text.Next(out _)) { }
        });
        Assert.Contains("a.txt", e.Message);
        Assert.Contains("changed while it was being prepared", e.Message);
        File.WriteAllText(a, "one");
        var shorter = Assert.Throws<DataFormatException>(() => ranges.Read(ranges.Ranges[^1], new byte[ranges.Ranges[^1].Bytes]));
        Assert.Contains("changed while it was being prepared", shorter.Message);
    }
}
