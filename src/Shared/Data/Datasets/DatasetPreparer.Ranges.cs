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
        var ranges = TextRanges.Plan(o.Train, o.Validation, word, o.Threads, o.RangeBytes, cancel);
        if (ranges is null)
        {
            log($"a source is not valid UTF-8 text with content, or (word tokenizer) has no space, tab or line feed within {TextRanges.MaxCutSearch / (1 << 20)} MiB: reading the sources as one stream, which names the problem");
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
                ranges.Read(r, bytes);
                var text = ranges.Text(r, bytes, tokenizing.Workers[w].TextBuffer(word, r.Bytes, o.PieceChars));
                var at = r.CharStart;
                while (text.Next(out var piece))
                {
                    var t = TrainChars(ranges, r, piece, at, cut);
                    tokenizing.Count(w, piece[..t]);
                    if (t < piece.Length) break; // the rest is validation text
                    at += piece.Length;
                }
                return 0;
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(bytes);
            }
        }, _ => { }, cancel);
        var (tokenizer, width) = FitToEncode(tokenizing, o, log, "3/3");
        var report = new DataReportBuilder();
        var sources = new List<DatasetSource>();
        var splits = TextSplits(writer, o, width);
        using var train = splits.Train;
        using var validation = splits.Validation;
        IncrementalHash? hash = null;
        try
        {
            OrderedParallel.Run(ranges.Ranges, o.Threads, (w, r) =>
            {
                // The range's bytes stay with it: the writing thread hashes them, in order, into its source's SHA-256.
                var bytes = ArrayPool<byte>.Shared.Rent(Math.Max(1, r.Bytes));
                ranges.Read(r, bytes);
                var text = ranges.Text(r, bytes, tokenizing.Workers[w].TextBuffer(word, r.Bytes, o.PieceChars));
                var train = new RangeIds(width);
                var validation = new RangeIds(width);
                var at = r.CharStart;
                while (text.Next(out var piece))
                {
                    var t = TrainChars(ranges, r, piece, at, cut);
                    train.Add(tokenizing, w, piece[..t], r.Chars);
                    validation.Add(tokenizing, w, piece[t..], r.Chars);
                    at += piece.Length;
                }
                return (Range: r, Bytes: bytes, Train: train, Validation: validation);
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
                x.Train.AppendTo(train);
                x.Validation.AppendTo(validation);
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

    /// <summary>
    /// How many characters of <paramref name="piece"/> (of range <paramref name="r"/>, from character
    /// <paramref name="at"/> of its split's text) are training text: all before the cut (none in a validation source),
    /// moved back one character so as not to split a surrogate pair, as <see cref="TextChunker"/> cuts.
    /// </summary>
    static int TrainChars(TextRanges ranges, TextRanges.Range r, ReadOnlySpan<char> piece, long at, long cut)
    {
        if (r.Validation) return 0;
        if (cut < 0 || cut >= at + piece.Length) return piece.Length;
        if (cut <= at) return 0;
        var take = (int)(cut - at);
        if (char.IsHighSurrogate(piece[take - 1]) && char.IsLowSurrogate(piece[take]))
        {
            take--;
            if (at + take <= 0) throw new DataFormatException(ranges.Sources[r.Source].Path, 0, "the text is too short to split into training and validation");
        }
        return take;
    }

    /// <summary>A range's ids for one split, narrowed to the shards' width, in a pooled buffer rented at the first text.</summary>
    sealed class RangeIds(int width)
    {
        PooledBytes? bytes;
        int length;

        /// <summary>Encodes <paramref name="text"/> after what is there (<paramref name="rangeChars"/>: the most the range's text can take).</summary>
        public void Add(Tokenizing tokenizing, int w, ReadOnlySpan<char> text, int rangeChars)
        {
            if (text.IsEmpty) return;
            bytes ??= new PooledBytes(ArrayPool<byte>.Shared.Rent(rangeChars * width));
            length += tokenizing.EncodeNarrowed(w, text, bytes.Array.AsSpan(length), width) * width;
        }

        public void AppendTo(DatasetSplitWriter split)
        {
            if (bytes is null) return;
            try
            {
                split.AppendNarrowed(bytes, length);
            }
            finally
            {
                bytes.Release();
                bytes = null;
            }
        }
    }
}
