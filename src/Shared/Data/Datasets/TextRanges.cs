using System.Buffers;
using System.Text.Unicode;
using Microsoft.Win32.SafeHandles;
using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>
/// A language model's sources when every one is uncompressed plain text, cut into ranges of about
/// <see cref="DefaultRangeBytes"/> bytes that the tokenizing threads read themselves (positional reads, no thread
/// decoding for the others) with the same result as <see cref="SourceReader"/> and <see cref="TextChunker"/> give for
/// the whole text: a range begins at the start of a UTF-8 sequence and never between "\r" and "\n" (CRLF becomes LF
/// within a range), for the word tokenizer only after a space, tab or line feed; a file's BOM is left out; a source
/// after the first of its split begins with the "\n" that joins records. <see cref="Plan"/> reads every byte once, on
/// every thread, to check the UTF-8 and count each range's characters, which places the validation cut; when that
/// finds a source <see cref="SourceReader"/> would refuse (invalid UTF-8, only whitespace, empty) or no cut point for
/// the word tokenizer within <see cref="MaxCutSearch"/> bytes, it returns null and the stream path runs and reports.
/// </summary>
internal sealed class TextRanges
{
    public const int DefaultRangeBytes = 1 << 21;
    /// <summary>How far past a range's nominal end a cut point is looked for before giving the sources to the stream path.</summary>
    public const int MaxCutSearch = 1 << 24;

    /// <summary>
    /// Bytes <c>[Offset, Offset + Bytes)</c> of source <see cref="Source"/>; its text (with the joining "\n" when
    /// <see cref="Joined"/>) is characters <c>[CharStart, CharStart + Chars)</c> of its split's joined text.
    /// </summary>
    public sealed class Range(int source, long offset, int bytes, bool joined, bool validation)
    {
        public int Source { get; } = source;
        public long Offset { get; } = offset;
        public int Bytes { get; } = bytes;
        public bool Joined { get; } = joined;
        /// <summary>A range of a separate validation source (all of it validation, whatever the cut).</summary>
        public bool Validation { get; } = validation;
        public long CharStart { get; set; }
        public int Chars { get; set; }
        /// <summary>The last range of its source.</summary>
        public bool Last { get; set; }
    }

    public IReadOnlyList<SourceFile> Sources { get; }
    public IReadOnlyList<Range> Ranges { get; }
    /// <summary>Each source's size as planned.</summary>
    public IReadOnlyList<long> Lengths { get; }
    /// <summary>The characters of the training sources joined (what <see cref="DatasetPreparer"/>'s length pass measures).</summary>
    public long TrainChars { get; }

    TextRanges(IReadOnlyList<SourceFile> sources, long[] lengths, List<Range> ranges, long trainChars)
    {
        Sources = sources;
        Lengths = lengths;
        Ranges = ranges;
        TrainChars = trainChars;
    }

    static readonly SearchValues<byte> AsciiWhiteSpace = SearchValues.Create(Enumerable.Range(0, 128).Where(c => char.IsWhiteSpace((char)c)).Select(c => (byte)c).ToArray());
    static readonly SearchValues<byte> WordSeparators = SearchValues.Create(" \n\t"u8);

    /// <summary>The ranges of <paramref name="train"/> then <paramref name="validation"/>, or null when they are not all uncompressed plain text or the stream path must read them (see the class).</summary>
    public static TextRanges? Plan(IReadOnlyList<SourceFile> train, IReadOnlyList<SourceFile> validation, bool word, int threads, int rangeBytes, CancellationToken cancel)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rangeBytes, 1);
        var sources = train.Concat(validation).ToList();
        if (sources.Count == 0 || sources.Any(s => s.Format != DataFormats.Text || s.Compression != SourceFiles.None)) return null;
        // A file is opened for each read and closed after it (never all at once: a directory of many files would
        // exceed the limit on open files).
        var lengths = new long[sources.Count];
        for (var i = 0; i < sources.Count; i++)
        {
            using var handle = Open(sources[i].Path);
            lengths[i] = RandomAccess.GetLength(handle);
        }
        var ranges = new List<Range>();
        var cutFound = true;
        var content = new bool[sources.Count];
        var valid = true;
        long trainChars = 0, validationChars = 0;
        OrderedParallel.Run(Cut(sources, train.Count, lengths, word, rangeBytes, () => cutFound = false), threads, (_, r) =>
        {
            var bytes = ArrayPool<byte>.Shared.Rent(Math.Max(1, r.Bytes));
            try
            {
                var data = bytes.AsSpan(0, r.Bytes);
                ReadAt(sources[r.Source].Path, data, r.Offset);
                if (!Utf8.IsValid(data)) return (Range: r, Valid: false, Content: false, Chars: 0);
                var chars = System.Text.Encoding.UTF8.GetCharCount(data) - data.Count("\r\n"u8) + (r.Joined ? 1 : 0);
                return (Range: r, Valid: true, Content: HasContent(data), Chars: chars);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(bytes);
            }
        }, s =>
        {
            valid &= s.Valid;
            content[s.Range.Source] |= s.Content;
            ref var at = ref s.Range.Validation ? ref validationChars : ref trainChars;
            s.Range.CharStart = at;
            s.Range.Chars = s.Chars;
            at += s.Chars;
            ranges.Add(s.Range);
        }, cancel);
        if (!cutFound || !valid || content.Contains(false)) return null;
        for (var i = 0; i < ranges.Count; i++) ranges[i].Last = i == ranges.Count - 1 || ranges[i + 1].Source != ranges[i].Source;
        return new TextRanges(sources, lengths, ranges, trainChars);
    }

    static SafeFileHandle Open(string path)
    {
        try
        {
            return File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DataFormatException(path, 0, $"cannot open the file: {e.Message}");
        }
    }

    /// <summary>Reads <paramref name="data"/>.Length bytes of the file at <paramref name="offset"/>; a short read means the file changed.</summary>
    static void ReadAt(string path, Span<byte> data, long offset)
    {
        using var handle = Open(path);
        ReadExactly(handle, path, data, offset);
    }

    /// <summary>Whether valid UTF-8 <paramref name="data"/> holds a character that is not whitespace (as <see cref="MemoryExtensions.IsWhiteSpace"/> tells of the decoded text).</summary>
    internal static bool HasContent(ReadOnlySpan<byte> data)
    {
        while (true)
        {
            var at = data.IndexOfAnyExcept(AsciiWhiteSpace);
            if (at < 0) return false;
            if (data[at] < 0x80) return true;
            System.Text.Rune.DecodeFromUtf8(data[at..], out var rune, out var used);
            if (!System.Text.Rune.IsWhiteSpace(rune)) return true;
            data = data[(at + used)..];
        }
    }

    /// <summary>The ranges of every source in order, cut where <see cref="NextCut"/> says; <paramref name="noCut"/> when a word tokenizer's source has none.</summary>
    static IEnumerable<Range> Cut(List<SourceFile> sources, int trainCount, long[] lengths, bool word, int rangeBytes, Action noCut)
    {
        var window = new byte[1 << 12];
        for (var i = 0; i < sources.Count; i++)
        {
            using var handle = Open(sources[i].Path);
            var length = lengths[i];
            var head = window.AsSpan(0, (int)Math.Min(3, length));
            ReadExactly(handle, sources[i].Path, head, 0);
            long at = head.SequenceEqual((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? 3 : 0;
            var joined = i != 0 && i != trainCount; // "\n" joins a split's records
            while (at < length)
            {
                var end = at + rangeBytes >= length ? length : NextCut(handle, sources[i].Path, at + rangeBytes, length, word, window);
                if (end < 0)
                {
                    noCut();
                    yield break;
                }
                yield return new Range(i, at, checked((int)(end - at)), joined, validation: i >= trainCount);
                joined = false;
                at = end;
            }
        }
    }

    /// <summary>The first cut point at or after <paramref name="from"/> (see the class), the file's end, or -1 when there is none within <see cref="MaxCutSearch"/> bytes.</summary>
    static long NextCut(SafeFileHandle handle, string path, long from, long length, bool word, byte[] window)
    {
        // The window starts one byte early: a cut point depends on the byte before it.
        for (var start = from - 1; ; )
        {
            var n = (int)Math.Min(window.Length, length - start);
            var data = window.AsSpan(0, n);
            ReadExactly(handle, path, data, start);
            if (word)
            {
                var at = data[..^1].IndexOfAny(WordSeparators);
                if (at >= 0) return start + at + 1;
            }
            else
            {
                for (var k = 1; k < n; k++)
                    if ((data[k] & 0xC0) != 0x80 && data[k - 1] != (byte)'\r') return start + k;
            }
            if (start + n >= length) return length;
            start += n - 1;
            if (start - from > MaxCutSearch) return -1;
        }
    }

    /// <summary>Reads <paramref name="data"/>.Length bytes at <paramref name="offset"/>; a short read means the file changed.</summary>
    static void ReadExactly(SafeFileHandle handle, string path, Span<byte> data, long offset)
    {
        while (!data.IsEmpty)
        {
            int n;
            try
            {
                n = RandomAccess.Read(handle, data, offset);
            }
            catch (IOException e)
            {
                throw new DataFormatException(path, 0, $"cannot read it: {e.Message}");
            }
            if (n == 0) throw Changed(path);
            data = data[n..];
            offset += n;
        }
    }

    static DataFormatException Changed(string path) => new(path, 0, "the file changed while it was being prepared (it is shorter, or no longer the text it was); prepare it again once it stays as it is");

    /// <summary>The bytes of <paramref name="r"/> into <paramref name="bytes"/> (at least <see cref="Range.Bytes"/> long).</summary>
    public void Read(Range r, Span<byte> bytes) => ReadAt(Sources[r.Source].Path, bytes[..r.Bytes], r.Offset);

    /// <summary>Bytes <c>[offset, offset + data.Length)</c> of source <paramref name="source"/> (a BOM the ranges leave out, for the source's hash).</summary>
    public void ReadAt(int source, Span<byte> data, long offset) => ReadAt(Sources[source].Path, data, offset);

    /// <summary>The text of <paramref name="r"/> from its <paramref name="bytes"/>, a piece at a time into <paramref name="buffer"/> (see <see cref="RangeText"/>).</summary>
    public RangeText Text(Range r, ReadOnlySpan<byte> bytes, Span<char> buffer) => new(r, bytes[..r.Bytes], buffer, Sources[r.Source].Path);

    internal static DataFormatException ChangedError(string path) => Changed(path);

    /// <summary>Fails naming the source when its size is no longer the one planned.</summary>
    public void CheckUnchanged(int source)
    {
        using var handle = Open(Sources[source].Path);
        if (RandomAccess.GetLength(handle) != Lengths[source]) throw Changed(Sources[source].Path);
    }
}

/// <summary>
/// A range's text as <see cref="SourceReader"/> yields it (the joining "\n" first, CRLF made LF), decoded a piece of at
/// most the buffer's length at a time, so that the characters are counted or encoded while they are in the core's cache
/// rather than written out to memory and read back. A piece never ends inside a surrogate pair (the decoder writes a
/// pair whole) nor between "\r" and "\n" (a trailing "\r" waits for the next piece). When the pieces do not add up
/// to the planned <see cref="TextRanges.Range.Chars"/> or the bytes are no longer valid UTF-8, the file changed since
/// it was planned: the error names it.
/// </summary>
internal ref struct RangeText
{
    readonly Span<char> buffer;
    readonly string path;
    readonly int planned;
    ReadOnlySpan<byte> bytes;
    bool joined, pendingCr, done;
    int total;

    public RangeText(TextRanges.Range r, ReadOnlySpan<byte> bytes, Span<char> buffer, string path)
    {
        if (buffer.Length < 4) throw new ArgumentException("needs room for a joining line feed, a held-back CR and a surrogate pair", nameof(buffer));
        this.buffer = buffer;
        this.bytes = bytes;
        this.path = path;
        planned = r.Chars;
        joined = r.Joined;
    }

    /// <summary>The next piece of the text (never empty), or false at its end.</summary>
    public bool Next(out ReadOnlySpan<char> piece)
    {
        while (!done)
        {
            var n = 0;
            if (joined) { buffer[n++] = '\n'; joined = false; }
            if (pendingCr) { buffer[n++] = '\r'; pendingCr = false; }
            var status = Utf8.ToUtf16(bytes, buffer[n..], out var read, out var written, replaceInvalidSequences: false, isFinalBlock: true);
            if (status is not (OperationStatus.Done or OperationStatus.DestinationTooSmall) || (status == OperationStatus.DestinationTooSmall && written == 0))
                throw TextRanges.ChangedError(path);
            bytes = bytes[read..];
            n += written;
            if (!bytes.IsEmpty && n > 0 && buffer[n - 1] == '\r')
            {
                pendingCr = true; // its "\n" may begin the next piece
                n--;
            }
            n = SourceReader.NormalizeLineEnds(buffer[..n]);
            done = bytes.IsEmpty && !pendingCr;
            total += n;
            if (done && total != planned) throw TextRanges.ChangedError(path);
            if (n == 0) continue;
            piece = buffer[..n];
            return true;
        }
        piece = default;
        return false;
    }
}
