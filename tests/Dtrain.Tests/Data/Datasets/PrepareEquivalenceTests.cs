using System.IO.Compression;
using System.Text;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static Dtrain.Tests.Data.Datasets.PrepareTestSupport;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>A prepared dataset holds exactly the ids, vocabulary and labels the in-memory path makes from the same data and options.</summary>
public sealed class PrepareEquivalenceTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    /// <summary>Text with CRLF line ends, words with apostrophes, capitals, non-ASCII letters and characters outside the BMP.</summary>
    static string Text(int lines) => string.Concat(Enumerable.Range(0, lines).Select(i =>
        $"Line {i}: Don't STOP, naïve café — 𝄞 music {i % 7} and 😀 faces\r\n{(i % 5 == 0 ? "  \t" : "")}Ünïcödé words' end.\n"));

    string Out(string name = "ds") => Path.Combine(dir.Path, name);

    PreparedDataset PrepareAndOpen(PrepareOptions o)
    {
        DatasetPreparer.Prepare(o);
        return PreparedDataset.Open(o.Output);
    }

    [Theory]
    [InlineData("char", false, 1)]
    [InlineData("char", true, 2)]
    [InlineData("word", false, 2)]
    [InlineData("word", true, 1)]
    public void Language_model_text_is_the_in_memory_ids(string tokenizer, bool lowercase, int threads)
    {
        var file = dir.Write("corpus.txt", "\uFEFF" + Text(60));
        var o = Options(Out(), [file]) with { Tokenizer = new TokenizerSpec { Kind = tokenizer, Lowercase = lowercase }, Threads = threads, ValidationFraction = 0.13 };
        using var ds = PrepareAndOpen(o);
        AssertSame(PreparedData.Load(Spec(o, "text", "corpus.txt"), dir.Path), ds);
        Assert.True(ds.Train.Shards.Count > 1, "small shards: several");
    }

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 2)]
    public void A_surrogate_pair_across_the_char_encoders_block_is_one_id(bool lowercase, int threads)
    {
        // The char tokenizer encodes a chunk 16,384 characters at a time: this pair's halves are the 16,384th and 16,385th.
        var file = dir.Write("corpus.txt", new string('a', (1 << 14) - 1) + "😀" + Text(60));
        var o = Options(Out(), [file]) with { Tokenizer = new TokenizerSpec { Kind = "char", Lowercase = lowercase }, Threads = threads, ValidationFraction = 0.13, ChunkChars = 1 << 16 };
        using var ds = PrepareAndOpen(o);
        AssertSame(PreparedData.Load(Spec(o, "text", "corpus.txt"), dir.Path), ds);
    }

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 2)]
    public void Cluster_parts_encode_a_surrogate_pair_across_the_char_encoders_block_as_one_id(bool lowercase, int threads)
    {
        // The parts of `prepare --on-cluster` (measured, counted, fitted, encoded and committed as the coordinator and its
        // workers do, here in one process) encode as the local prepare does, 16,384 characters at a time: each part's pair
        // straddles a block's end (the second part's text starts with the "\n" that joins it to the first).
        var a = dir.Write("a.txt", new string('a', (1 << 14) - 1) + "😀" + Text(40));
        var b = dir.Write("b.txt", new string('B', (1 << 14) - 2) + "😀" + Text(40));
        dir.Write("joined.txt", (File.ReadAllText(a) + "\n" + File.ReadAllText(b)).Replace("\r\n", "\n"));
        var o = Options(Out(), [a, b]) with { Tokenizer = new TokenizerSpec { Kind = "char", Lowercase = lowercase }, Threads = threads, ValidationFraction = 0.13, ChunkChars = 1 << 16 };
        var parts = o.Train.Select(s => o with { Train = [s] }).ToList();
        var cuts = DatasetPreparer.PlaceCut(o, [.. parts.Select(p => DatasetPreparer.MeasurePart(p))]);
        var counts = parts.Select((p, i) => DatasetPreparer.CountPart(p, cuts[i])).ToList();
        var (tokenizer, labels) = DatasetPreparer.FitParts(o, counts, joinersCounted: true);
        using (var writer = new DatasetWriter(o.Output, force: false))
        {
            var encoded = parts.Select((p, i) => DatasetPreparer.EncodePart(p, i, writer.Directory, tokenizer, labels.Names,
                trainJoiner: counts.Take(i).Any(c => c.TrainPieces), validationJoiner: false, cuts[i].Cut, cuts[i].AllValidation)).ToList();
            DatasetPreparer.CommitParts(o, writer, tokenizer, labels, encoded);
        }
        using var ds = PreparedDataset.Open(o.Output);
        AssertSame(PreparedData.Load(Spec(o, "text", "joined.txt"), dir.Path), ds);
    }

    [Theory]
    [InlineData("jsonl", "char")]
    [InlineData("csv", "word")]
    public void Language_model_records_are_joined_as_in_memory(string format, string tokenizer)
    {
        var texts = Enumerable.Range(0, 80).Select(i => $"Record {i} says \"hi\",\r\nand 😀 {new string('x', i % 13)}").ToList();
        var file = format == "jsonl"
            ? dir.Write("r.jsonl", string.Concat(texts.Select((t, i) => System.Text.Json.JsonSerializer.Serialize(new { text = t, n = i }) + (i % 9 == 0 ? "\n\n" : "\r\n"))))
            : dir.Write("r.csv", "n,text\r\n" + string.Concat(texts.Select((t, i) => $"{i},\"{t.Replace("\"", "\"\"")}\"\n")));
        var o = Options(Out(), [file]) with { Tokenizer = new TokenizerSpec { Kind = tokenizer }, Threads = 2, ValidationFraction = 0.2 };
        using var ds = PrepareAndOpen(o);
        AssertSame(PreparedData.Load(Spec(o, format, Path.GetFileName(file)), dir.Path), ds);
    }

    [Theory]
    [InlineData("jsonl", "char", 1)]
    [InlineData("jsonl", "word", 2)]
    [InlineData("csv", "char", 2)]
    [InlineData("csv", "word", 1)]
    public void Classification_is_the_in_memory_split_ids_and_labels(string format, string tokenizer, int threads)
    {
        var rng = new Random(3);
        var rows = Enumerable.Range(0, 300).Select(i => (Text: $"Message {i}: {string.Join(' ', Enumerable.Range(0, rng.Next(1, 40)).Select(k => (char)('a' + rng.Next(26)) + "ß" + k))} 𝄞",
            Label: i % 11 == 0 ? "rare" : i % 2 == 0 ? "spam" : "ham")).ToList();
        var file = format == "jsonl"
            ? dir.Write("c.jsonl", string.Concat(rows.Select(r => System.Text.Json.JsonSerializer.Serialize(new { text = r.Text, label = r.Label }) + "\n")) + "{\"text\": 5}\n")
            : dir.Write("c.csv", "label,text\n" + string.Concat(rows.Select(r => $"{r.Label},\"{r.Text}\"\n")) + "x,y,z\n");
        var o = Options(Out(), [file]) with
        {
            Task = TaskKinds.Classification,
            Tokenizer = new TokenizerSpec { Kind = tokenizer, MinFrequency = 2 },
            Threads = threads,
            MaxLength = 60,
            OnError = ErrorPolicies.Skip,
            Seed = 17,
            ValidationFraction = 0.25,
        };
        using var ds = PrepareAndOpen(o);
        var expected = PreparedData.Load(Spec(o, format, Path.GetFileName(file)), dir.Path);
        AssertSame(expected, ds);
        Assert.Equal(expected.Report.Skipped, ds.Manifest.Report.Skipped);
        Assert.Equal(expected.Report.Truncated, ds.Manifest.Report.Truncated);
        Assert.True(ds.Manifest.Report.Truncated > 0);
    }

    [Fact]
    public void Separate_validation_sources_are_the_in_memory_validation_file()
    {
        var train = dir.Write("train.jsonl", string.Concat(Enumerable.Range(0, 50).Select(i => $"{{\"text\":\"t{i} words here\",\"label\":{i % 3}}}\n")));
        var valid = dir.Write("valid.jsonl", string.Concat(Enumerable.Range(0, 9).Select(i => $"{{\"text\":\"v{i} words unseen\",\"label\":{i % 3}}}\n")));
        var o = Options(Out(), [train], validation: [valid]) with { Task = TaskKinds.Classification, Tokenizer = new TokenizerSpec { Kind = "word" } };
        using var ds = PrepareAndOpen(o);
        AssertSame(PreparedData.Load(Spec(o, "jsonl", "train.jsonl", "valid.jsonl"), dir.Path), ds);

        var lmTrain = dir.Write("a.txt", Text(20));
        var lmValid = dir.Write("b.txt", Text(3));
        var lm = Options(Out("lm"), [lmTrain], validation: [lmValid]);
        using var lmds = PrepareAndOpen(lm);
        AssertSame(PreparedData.Load(Spec(lm, "text", "a.txt", "b.txt"), dir.Path), lmds);
    }

    [Fact]
    public void A_validation_label_never_seen_in_training_is_refused_at_its_line()
    {
        var train = dir.Write("train.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\"}\n");
        var valid = dir.Write("valid.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"c\",\"label\":\"z\"}\n");
        var e = Assert.Throws<DataFormatException>(() => DatasetPreparer.Prepare(Options(Out(), [train], validation: [valid]) with { Task = TaskKinds.Classification }));
        Assert.Equal(valid, e.File);
        Assert.Equal(2, e.Line);
        Assert.Contains("label \"z\" never occurs in the training data", e.Message);
        Assert.False(Directory.Exists(Out()));
    }

    [Fact]
    public void Gzip_zstd_directories_and_globs_read_as_the_same_text_joined()
    {
        var a = Text(30);
        var b = "Second file 𝄞 with words.\r\nAnd more.";
        var c = "third";
        Directory.CreateDirectory(Path.Combine(dir.Path, "in", "bsub"));
        File.WriteAllBytes(Path.Combine(dir.Path, "in", "a.txt.gz"), Gzip(Encoding.UTF8.GetBytes(a)));
        File.WriteAllBytes(Path.Combine(dir.Path, "in", "bsub", "b.txt.zst"), Zstd(Encoding.UTF8.GetBytes(b)));
        File.WriteAllText(Path.Combine(dir.Path, "in", "c.txt"), c);
        File.WriteAllText(Path.Combine(dir.Path, "in", ".hidden.txt"), "never read");
        var joined = dir.Write("joined.txt", (a + "\n" + b + "\n" + c).Replace("\r\n", "\n"));

        foreach (var (name, sources) in new[]
        {
            ("dir", new[] { Path.Combine(dir.Path, "in") }),
            ("glob", new[] { Path.Combine(dir.Path, "in", "**", "*.txt*") }),
            ("files", new[] { Path.Combine(dir.Path, "in", "a.txt.gz"), Path.Combine(dir.Path, "in", "bsub", "b.txt.zst"), Path.Combine(dir.Path, "in", "c.txt") }),
        })
        {
            var o = Options(Out(name), sources) with { Tokenizer = new TokenizerSpec { Kind = "word" }, Threads = 2 };
            using var ds = PrepareAndOpen(o);
            Assert.Equal(["a.txt.gz", "b.txt.zst", "c.txt"], ds.Manifest.Sources.Select(s => Path.GetFileName(s.Path)));
            Assert.Equal(["gzip", "zstd", "none"], ds.Manifest.Sources.Select(s => s.Compression));
            var stored = ds.Manifest.Sources[1];
            Assert.Equal(new FileInfo(stored.Path).Length, stored.Bytes);
            Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(stored.Path))), stored.Sha256);
            AssertSame(PreparedData.Load(Spec(o, "text", "joined.txt"), dir.Path), ds);
        }
    }

    [Fact]
    public void A_file_named_with_a_glob_character_is_that_file_and_patterns_still_match()
    {
        // "notes[1].txt" used to be read as a pattern: it matched "notes1.txt" and silently read that file instead.
        var named = dir.Write("notes[1].txt", "named");
        dir.Write("notes1.txt", "other");
        Assert.Equal(["notes[1].txt"], SourceFiles.Expand([named], DatasetLayout.TrainSplit, null).Select(f => Path.GetFileName(f.Path)));
        Assert.Equal(["notes1.txt"], SourceFiles.Expand([Path.Combine(dir.Path, "notes[0-9].txt")], DatasetLayout.TrainSplit, null).Select(f => Path.GetFileName(f.Path)));
        Assert.Equal(2, SourceFiles.Expand([Path.Combine(dir.Path, "notes*.txt")], DatasetLayout.TrainSplit, null).Count);
        var unknown = dir.Write("notes.data", "x");
        Assert.Contains("cannot tell its format from the extension (.txt or .text, .jsonl or .json, .csv, each optionally .gz or .zst)",
            Assert.Throws<ArgumentException>(() => SourceFiles.Expand([unknown], DatasetLayout.TrainSplit, null)).Message);
    }

    [Fact]
    public void One_and_two_threads_write_byte_identical_datasets()
    {
        var moby = RepoFiles.PathOf("data", "moby-dick", "moby-dick.txt");
        var spam = RepoFiles.PathOf("data", "spam-assassin", "spam-assassin.jsonl");
        foreach (var (kind, task, source, more) in new[] { ("word", TaskKinds.LanguageModel, moby, 2), ("char", TaskKinds.Classification, spam, 2), ("char", TaskKinds.LanguageModel, moby, 3), ("word", TaskKinds.Classification, spam, 3) })
        {
            var outputs = new List<string>();
            foreach (var threads in new[] { 1, more })
            {
                var output = Out($"{kind}-{task}-{threads}");
                DatasetPreparer.Prepare(Options(output, [source]) with { Task = task, Tokenizer = new TokenizerSpec { Kind = kind }, Threads = threads, ShardTokens = 50_000, ChunkChars = 4096 });
                outputs.Add(output);
            }
            var files = Directory.GetFiles(outputs[0]).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            Assert.Equal(files, Directory.GetFiles(outputs[1]).Select(Path.GetFileName).Order(StringComparer.Ordinal));
            Assert.True(files.Count > 4, $"several shards: {string.Join(", ", files)}");
            foreach (var f in files) Assert.True(File.ReadAllBytes(Path.Combine(outputs[0], f!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(outputs[1], f!))), $"{kind}: {f} differs");
        }
    }

    [Fact]
    public void A_text_length_from_the_bytes_is_the_length_read_or_left_to_the_reader()
    {
        // Pass 1 measures plain text from its bytes; it must be the length the reader yields, across its 1 MiB reads:
        // a BOM, CRLF (one split between two reads), sequences of 2-4 bytes split between reads, a lone CR at the end.
        const int Read = 1 << 20;
        var big = new StringBuilder("\uFEFFStart\r\n");
        while (Encoding.UTF8.GetByteCount(big.ToString()) < Read - 1) big.Append("Call me Ishmael — 𝄞 naïve.\r\n");
        var bytes = Encoding.UTF8.GetBytes(big.ToString());
        var cases = new List<(string Name, byte[] Bytes)> { ("plain", Encoding.UTF8.GetBytes("Hello, world.\r\nBye\r")) };
        foreach (var piece in new[] { "\r\n", "é", "—", "𝄞" })
        {
            var p = Encoding.UTF8.GetBytes(piece);
            for (var shift = 1; shift < p.Length; shift++)
            {
                var prefix = bytes[..(Read - shift)];
                cases.Add(($"split-{piece.Length}-{shift}", [.. prefix, .. p, .. Encoding.UTF8.GetBytes("tail\r\nend")]));
            }
        }
        foreach (var (name, content) in cases)
        {
            var file = SourceFiles.Expand([dir.WriteBytes(name + ".txt", content)], DatasetLayout.TrainSplit, null)[0];
            var read = SourceReader.Read(file, new ReadOptions(), new DataReportBuilder(), null, default).Sum(p => (long)p.Text.Length);
            Assert.Equal(read, SourceReader.TextLength(file, default));
        }
        var gz = SourceFiles.Expand([dir.WriteBytes("z.txt.gz", Gzip(cases[^1].Bytes))], DatasetLayout.TrainSplit, null)[0];
        Assert.Equal(SourceReader.Read(gz, new ReadOptions(), new DataReportBuilder(), null, default).Sum(p => (long)p.Text.Length), SourceReader.TextLength(gz, default));
        // Left to the reader, which reports the error or decides: invalid UTF-8 (also cut short at the end), only whitespace, empty, non-ASCII first.
        foreach (var (name, content) in new[] { ("invalid", [.. bytes, 0xFF, (byte)'a']), ("short", [.. bytes, 0xE2, 0x80]), ("blank", " \r\n\t"u8.ToArray()), ("empty", []), ("nbsp", "\u00A0x"u8.ToArray()) })
            Assert.Null(SourceReader.TextLength(SourceFiles.Expand([dir.WriteBytes(name + ".txt", content)], DatasetLayout.TrainSplit, null)[0], default));
    }

    [Fact]
    public void Round_trip_decodes_to_the_text()
    {
        var text = string.Concat(Enumerable.Repeat("Call me Ishmael. Some years ago — never mind how long 𝄞.\nIt is a way I have. ", 3));
        var file = dir.Write("t.txt", text);
        using var ds = PrepareAndOpen(Options(Out(), [file]) with { ValidationFraction = 0.1 });
        var all = ds.Train.ReadAllTokens().Concat(ds.Validation.ReadAllTokens());
        Assert.Equal(text, ds.Tokenizer.Decode(all));
        Assert.Equal(DatasetLayout.Uint8, ds.Manifest.TokenDtype);
        Assert.Equal(ds.Train.Shards[0].TokenCount, new FileInfo(Path.Combine(ds.Directory, ds.Manifest.Train.Shards[0].Tokens.Name)).Length);
        Assert.Equal(ds.Train.Tokens, ds.Train.Shards.Sum(s => s.TokenCount));
        Assert.Equal(ds.Train.ReadAllTokens()[100], ds.Train.Shards[1][100 - 97]);
    }

    [Fact]
    public void A_char_dataset_of_moby_dick_takes_one_byte_per_token_and_holds_the_in_memory_ids()
    {
        var file = dir.Write("moby.txt", File.ReadAllText(RepoFiles.PathOf("data", "moby-dick", "moby-dick.txt")));
        var o = Options(Out(), [file]) with { ShardTokens = 300_000, ChunkChars = 1 << 16, Threads = 2 };
        using var ds = PrepareAndOpen(o);
        Assert.Equal(DatasetLayout.Uint8, ds.Manifest.TokenDtype);
        Assert.True(ds.Manifest.VocabSize is > 64 and <= 256, $"vocabulary {ds.Manifest.VocabSize}");
        Assert.True(ds.Train.Shards.Count > 1, $"{ds.Train.Shards.Count} shard(s)");
        foreach (var s in ds.Manifest.Train.Shards.Concat(ds.Manifest.Validation.Shards))
        {
            Assert.Equal(s.TokenCount, s.Tokens.Bytes);
            Assert.Equal(s.TokenCount, new FileInfo(Path.Combine(ds.Directory, s.Tokens.Name)).Length);
        }
        AssertSame(PreparedData.Load(Spec(o, "text", "moby.txt"), dir.Path), ds);
        // Reads at every alignment and length around a vector's width, across a shard boundary too.
        var all = ds.Train.ReadAllTokens();
        var boundary = ds.Train.Shards[0].TokenCount;
        foreach (var start in new[] { 0L, 1, 7, 31, boundary - 40, boundary - 1 })
            foreach (var length in new[] { 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100 })
            {
                var ids = new int[length];
                ds.Train.Read(start, ids);
                Assert.Equal(all.AsSpan((int)start, length).ToArray(), ids);
            }
    }

    [Theory]
    [InlineData(256, "uint8", 1)]
    [InlineData(257, "uint16", 2)]
    public void A_word_vocabulary_of_256_tokens_takes_one_byte_per_token_and_of_257_two(int maxVocab, string dtype, int width)
    {
        // 400 words, each more frequent than the next: the vocabulary is <pad>, <unk> and the first maxVocab - 2.
        var text = string.Join(' ', Enumerable.Range(0, 400).SelectMany(i => Enumerable.Repeat($"w{i}", 1 + (400 - i) / 40).Append($"v{i}"))) + "\n";
        var file = dir.Write("words.txt", string.Concat(Enumerable.Repeat(text, 3)));
        var o = Options(Out(), [file]) with { Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word, MaxVocab = maxVocab }, ShardTokens = 1000, ChunkChars = 4096, Threads = 2 };
        using var ds = PrepareAndOpen(o);
        Assert.Equal(maxVocab, ds.Manifest.VocabSize);
        Assert.Equal(dtype, ds.Manifest.TokenDtype);
        foreach (var s in ds.Manifest.Train.Shards.Concat(ds.Manifest.Validation.Shards))
            Assert.Equal(s.TokenCount * width, new FileInfo(Path.Combine(ds.Directory, s.Tokens.Name)).Length);
        AssertSame(PreparedData.Load(Spec(o, "text", "words.txt"), dir.Path), ds);
        // The last id of the vocabulary is there, read back unsigned (255 from one byte).
        Assert.Equal(maxVocab - 1, ds.Train.ReadAllTokens().Concat(ds.Validation.ReadAllTokens()).Max());
    }

    internal static byte[] Gzip(byte[] data)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest)) gz.Write(data);
        return ms.ToArray();
    }

    internal static byte[] Zstd(byte[] data)
    {
        using var c = new ZstdSharp.Compressor(3);
        return c.Wrap(data).ToArray();
    }
}
