using System.Buffers;
using System.Security.Cryptography;
using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

public static partial class DatasetPreparer
{
    /// <summary>
    /// A language model whose sources are all uncompressed plain text, read in ranges (<see cref="TextRanges"/>) by the
    /// tokenizing threads themselves: (1) every range's UTF-8 checked and characters counted, which places the
    /// validation cut; (2) the training ranges' tokens counted; (3) the ranges encoded and written in order, the sources
    /// hashed from the very bytes encoded. The same dataset as the stream path, byte for byte; null when the stream
    /// path must read the sources (see <see cref="TextRanges"/>).
    /// </summary>
    static Result? LanguageModelInRanges(PrepareOptions o, DatasetWriter writer, Action<string> log, CancellationToken cancel)
    {
        if (o.StreamOnly) return null;
        var word = o.Tokenizer.Kind == TokenizerKinds.Word;
        var sourceCount = o.Train.Count + o.Validation.Count;
        if (o.Train.Concat(o.Validation).Any(s => s.Format != DataFormats.Text || s.Compression != SourceFiles.None)) return null;
        log(o.Validation.Count == 0
            ? $"pass 1/3: the length of the text ({o.Train.Count} source(s), read in ranges on {o.Threads} thread(s)), to hold out the last {o.ValidationFraction:P1} for validation"
            : $"pass 1/3: the text of {sourceCount} source(s), read in ranges on {o.Threads} thread(s)");
        using var ranges = TextRanges.Plan(o.Train, o.Validation, word, o.Threads, o.RangeBytes, cancel);
        if (ranges is null)
        {
            log("a source is not plain UTF-8 text with content (or, for the word tokenizer, has no space for too long): reading the sources as one stream");
            return null;
        }
        var cut = o.Validation.Count == 0 ? Cut(o, ranges.TrainChars) : -1;

        log($"pass 2/3: counting {o.Tokenizer.Kind} tokens of the training split on {o.Threads} thread(s)");
        var tokenizing = new Tokenizing(o.Tokenizer, o.Threads);
        OrderedParallel.Run(ranges.Ranges.Where(r => !r.Validation && (cut < 0 || r.CharStart < cut)), o.Threads, (w, r) =>
        {
            var bytes = ArrayPool<byte>.Shared.Rent(Math.Max(1, r.Bytes));
            try
            {
                var text = TextOf(ranges, r, bytes, tokenizing.Workers[w]);
                tokenizing.Count(w, text[..TrainChars(ranges, r, text, cut)]);
                return 0;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(bytes);
            }
        }, _ => { }, cancel);
        var tokenizer = tokenizing.Fit();
        if (tokenizer.VocabSize < 3) throw new ArgumentException(VocabularyProblem(o));

        log($"pass 3/3: encoding on {o.Threads} thread(s) (vocabulary {tokenizer.VocabSize:N0})");
        var width = DatasetLayout.WidthFor(tokenizer.VocabSize);
        var report = new DataReportBuilder();
        var sources = new List<DatasetSource>();
        using var train = writer.Split(DatasetLayout.TrainSplit, width, records: false, o.ShardTokens, o.BlockBytes, hashBehind: o.Threads > 1);
        using var validation = writer.Split(DatasetLayout.ValidationSplit, width, records: false, o.ShardTokens, o.BlockBytes, hashBehind: o.Threads > 1);
        IncrementalHash? hash = null;
        try
        {
            OrderedParallel.Run(ranges.Ranges, o.Threads, (w, r) =>
            {
                // The range's bytes stay with it: the writing thread hashes them, in order, into its source's SHA-256.
                var bytes = ArrayPool<byte>.Shared.Rent(Math.Max(1, r.Bytes));
                var text = TextOf(ranges, r, bytes, tokenizing.Workers[w]);
                var t = TrainChars(ranges, r, text, cut);
                return (Range: r, Bytes: bytes, Train: Encoded(tokenizing, w, text[..t], width), Validation: Encoded(tokenizing, w, text[t..], width));
            }, x =>
            {
                var r = x.Range;
                if (hash is null)
                {
                    hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                    if (r.Offset > 0)
                    {
                        Span<byte> bom = stackalloc byte[3];
                        ranges.ReadAt(r.Source, bom[..(int)r.Offset], 0);
                        hash.AppendData(bom[..(int)r.Offset]);
                    }
                }
                hash.AppendData(x.Bytes.AsSpan(0, r.Bytes));
                ArrayPool<byte>.Shared.Return(x.Bytes);
                Append(train, x.Train);
                Append(validation, x.Validation);
                if (r.Last)
                {
                    ranges.CheckUnchanged(r.Source);
                    var s = ranges.Sources[r.Source];
                    sources.Add(new DatasetSource(s.Path, s.Split, s.Format, s.Compression, ranges.Lengths[r.Source], Convert.ToHexStringLower(hash.GetHashAndReset())));
                    hash.Dispose();
                    hash = null;
                    report.CountRead(); // a plain text file is one record
                }
            }, cancel);
        }
        finally
        {
            hash?.Dispose();
        }
        if (validation.Tokens < 2)
            throw new DataFormatException((o.Validation.Count > 0 ? o.Validation : o.Train)[^1].Path, 0,
                $"the validation split has {validation.Tokens} token(s); raise --validation-fraction or give a longer validation source");
        return new Result(tokenizer, LabelSet.Empty, sources, train.Finish(), validation.Finish(), report.ToReport());
    }

    /// <summary>The text of range <paramref name="r"/>, read into <paramref name="bytes"/> and decoded into the worker's scratch space.</summary>
    static ReadOnlySpan<char> TextOf(TextRanges ranges, TextRanges.Range r, byte[] bytes, Worker s)
    {
        ranges.Read(r, bytes);
        if (s.Text.Length < r.Bytes + 1) s.Text = new char[Math.Max(r.Bytes + 1, 1 << 16)];
        return s.Text.AsSpan(0, ranges.Decode(r, bytes, s.Text));
    }

    /// <summary>
    /// How many of range <paramref name="r"/>'s characters <paramref name="text"/> are training text: all before the cut
    /// (none in a validation source), moved back one character so as not to split a surrogate pair, as
    /// <see cref="TextChunker"/> cuts.
    /// </summary>
    static int TrainChars(TextRanges ranges, TextRanges.Range r, ReadOnlySpan<char> text, long cut)
    {
        if (r.Validation) return 0;
        if (cut < 0 || cut >= r.CharStart + text.Length) return text.Length;
        if (cut <= r.CharStart) return 0;
        var take = (int)(cut - r.CharStart);
        if (char.IsHighSurrogate(text[take - 1]) && char.IsLowSurrogate(text[take]))
        {
            take--;
            if (r.CharStart + take <= 0) throw new DataFormatException(ranges.Sources[r.Source].Path, 0, "the text is too short to split into training and validation");
        }
        return take;
    }

    /// <summary>The ids of <paramref name="text"/> narrowed to <paramref name="width"/> bytes, in a pooled buffer (null for no text).</summary>
    static (PooledBytes? Bytes, int Length) Encoded(Tokenizing tokenizing, int w, ReadOnlySpan<char> text, int width)
    {
        if (text.IsEmpty) return (null, 0);
        var bytes = new PooledBytes(ArrayPool<byte>.Shared.Rent(text.Length * width));
        return (bytes, tokenizing.EncodeNarrowed(w, text, bytes.Array, width) * width);
    }

    static void Append(DatasetSplitWriter split, (PooledBytes? Bytes, int Length) ids)
    {
        if (ids.Bytes is null) return;
        try
        {
            split.AppendNarrowed(ids.Bytes, ids.Length);
        }
        finally
        {
            ids.Bytes.Release();
        }
    }
}
