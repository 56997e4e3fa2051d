using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Dtrain.Data;

/// <summary>
/// Words and punctuation: a token is a run of letters, digits and combining marks (with apostrophes ' or ’
/// allowed between them, as in "don't"), or any other single non-whitespace character. Whitespace only separates.
/// Decoding joins tokens with single spaces, so it is lossy in whitespace: "Hi, there!\n" decodes as
/// "Hi , there !". &lt;pad&gt; decodes to nothing, &lt;unk&gt; to the text "&lt;unk&gt;".
/// </summary>
public sealed class WordTokenizer : ITokenizer
{
    readonly string[] tokens;
    readonly WordTable ids = new();

    internal WordTokenizer(IReadOnlyList<string> tokens, bool lowercase)
    {
        this.tokens = [.. tokens];
        Lowercase = lowercase;
        for (var id = 2; id < this.tokens.Length; id++) this.ids.GetOrAdd(this.tokens[id]) = id;
    }

    public string Kind => "word";
    public int VocabSize => this.tokens.Length;
    public bool Lowercase { get; }

    /// <summary>Fits the vocabulary to <paramref name="texts"/> (the training split only).</summary>
    public static WordTokenizer Fit(IEnumerable<string> texts, int minFrequency, int maxVocab, bool lowercase)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var counts = new WordTable();
        foreach (var raw in texts)
        {
            ArgumentNullException.ThrowIfNull(raw, nameof(texts));
            Count(lowercase ? raw.ToLowerInvariant() : raw, counts);
        }
        return FromCounts(counts, minFrequency, maxVocab, lowercase);
    }

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (Lowercase) text = text.ToLowerInvariant();
        var tally = new TallySink(); // the tokens counted first: only the ids are allocated, never an array per character
        Scan(text, ref tally);
        var ids = new int[tally.Count];
        var sink = new EncodeSink(this.ids, ids);
        Scan(text, ref sink);
        return ids;
    }

    /// <summary>
    /// Encodes <paramref name="text"/> (already lowercased when <see cref="Lowercase"/>) into <paramref name="ids"/> (at
    /// least <c>text.Length</c> long) exactly as <see cref="Encode(string)"/> encodes the same text; returns the number
    /// of ids. Splitting a text after a whitespace character and encoding the pieces gives the same ids as encoding it
    /// whole. Allocates nothing (dtrain prepare's hot path).
    /// </summary>
    internal int EncodeLowered(ReadOnlySpan<char> text, Span<int> ids)
    {
        if (ids.Length < text.Length) throw new ArgumentException($"needs room for {text.Length} ids", nameof(ids));
        var sink = new EncodeSink(this.ids, ids);
        Scan(text, ref sink);
        return sink.Count;
    }

    /// <summary>Adds the tokens of <paramref name="text"/> (already lowercased when fitting a lowercasing tokenizer) to <paramref name="counts"/>, as <see cref="Fit"/> counts them.</summary>
    internal static void Count(ReadOnlySpan<char> text, WordTable counts)
    {
        var sink = new CountSink(counts);
        Scan(text, ref sink);
    }

    /// <summary>The tokenizer <see cref="Fit"/> would make from texts with these token counts (see <see cref="Count(ReadOnlySpan{char}, WordTable)"/>).</summary>
    internal static WordTokenizer FromCounts(WordTable counts, int minFrequency, int maxVocab, bool lowercase) =>
        FromCounts(counts.ToDictionary(), minFrequency, maxVocab, lowercase);

    /// <summary>The tokenizer <see cref="Fit"/> would make from texts with these token counts.</summary>
    internal static WordTokenizer FromCounts(IReadOnlyDictionary<string, long> counts, int minFrequency, int maxVocab, bool lowercase) =>
        new(Vocabulary.Build(counts, minFrequency, maxVocab), lowercase);

    public string Decode(IEnumerable<int> ids) => Vocabulary.Decode(ids, this.tokens, Vocabulary.Unk, " ");

    public TokenizerState ToState() => new(Kind, Lowercase, [.. this.tokens]);

    /// <summary>The token strings of <paramref name="text"/> (before any vocabulary lookup or lowercasing).</summary>
    public static IReadOnlyList<string> Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var spans = new List<(int Start, int Length)>();
        Split(text, spans);
        return [.. spans.Select(s => text.Substring(s.Start, s.Length))];
    }

    static void Split(ReadOnlySpan<char> text, List<(int Start, int Length)> spans)
    {
        spans.Clear();
        var sink = new SpanSink(spans);
        Scan(text, ref sink);
    }

    /// <summary>Where <see cref="Scan"/> puts each token.</summary>
    interface ITokenSink
    {
        void Token(ReadOnlySpan<char> text, int start, int length);
    }

    struct SpanSink(List<(int Start, int Length)> spans) : ITokenSink
    {
        public readonly void Token(ReadOnlySpan<char> text, int start, int length) => spans.Add((start, length));
    }

    struct TallySink : ITokenSink
    {
        public int Count;

        public void Token(ReadOnlySpan<char> text, int start, int length) => Count++;
    }

    struct CountSink(WordTable counts) : ITokenSink
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public readonly void Token(ReadOnlySpan<char> text, int start, int length) => counts.GetOrAdd(text.Slice(start, length))++;
    }

    ref struct EncodeSink(WordTable vocabulary, Span<int> ids) : ITokenSink
    {
        readonly Span<int> ids = ids;
        public int Count;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Token(ReadOnlySpan<char> text, int start, int length) =>
            this.ids[Count++] = vocabulary.TryGet(text.Slice(start, length), out var id) ? (int)id : Vocabulary.UnkId;
    }

    /// <summary>Characters of the Basic Multilingual Plane by what they are to <see cref="Scan"/>.</summary>
    const byte Space = 0, WordChar = 1, Other = 2, Apostrophe = 3, Surrogate = 4;

    /// <summary>The class of every UTF-16 code unit: whitespace, a word character, an apostrophe (' or ’), a surrogate, or anything else.</summary>
    static readonly byte[] Classes = MakeClasses();

    static byte[] MakeClasses()
    {
        var classes = new byte[char.MaxValue + 1];
        for (var c = 0; c <= char.MaxValue; c++)
        {
            if (char.IsSurrogate((char)c)) { classes[c] = Surrogate; continue; }
            var r = new Rune(c);
            classes[c] = Rune.IsWhiteSpace(r) ? Space : IsWordRune(r) ? WordChar : c is '\'' or '\u2019' ? Apostrophe : Other;
        }
        return classes;
    }

    /// <summary>
    /// The tokens of <paramref name="text"/>, in order, to <paramref name="sink"/>: whitespace skipped; a run of word runes
    /// (with single apostrophes between them); or any other single rune. A lone surrogate reads as U+FFFD (one token).
    /// Characters outside the surrogates are classified by a table, the rest as runes.
    /// </summary>
    static void Scan<TSink>(ReadOnlySpan<char> text, ref TSink sink) where TSink : struct, ITokenSink, allows ref struct
    {
        ref var classes = ref MemoryMarshal.GetArrayDataReference(Classes);
        var n = text.Length;
        var i = 0;
        while (i < n)
        {
            var k = Unsafe.Add(ref classes, text[i]);
            if (k == Space) { i++; continue; }
            var start = i;
            bool word;
            if (k == Surrogate)
            {
                var r = RuneAt(text, i, out var len);
                i += len;
                if (Rune.IsWhiteSpace(r)) continue;
                word = IsWordRune(r);
            }
            else
            {
                i++;
                word = k == WordChar;
            }
            if (word)
            {
                while (i < n)
                {
                    var next = Unsafe.Add(ref classes, text[i]);
                    if (next == WordChar) { i++; continue; }
                    if (next == Surrogate)
                    {
                        if (!IsWordRune(RuneAt(text, i, out var slen))) break;
                        i += slen;
                        continue;
                    }
                    if (next == Apostrophe && i + 1 < n)
                    {
                        var after = Unsafe.Add(ref classes, text[i + 1]);
                        if (after == WordChar) { i += 2; continue; }
                        if (after == Surrogate && IsWordRune(RuneAt(text, i + 1, out var alen))) { i += 1 + alen; continue; }
                    }
                    break;
                }
            }
            sink.Token(text, start, i - start);
        }
    }

    static Rune RuneAt(ReadOnlySpan<char> s, int i, out int length)
    {
        var c = s[i];
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
        {
            length = 2;
            return new Rune(c, s[i + 1]);
        }
        length = 1;
        return char.IsSurrogate(c) ? Rune.ReplacementChar : new Rune(c);
    }

    static bool IsWordRune(Rune r)
    {
        if (r.Value < 128) return r.Value is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9');
        if (Rune.IsLetterOrDigit(r)) return true;
        var cat = Rune.GetUnicodeCategory(r);
        return cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark
            or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;
    }

    /// <summary>Why <paramref name="token"/> cannot be a word token, or null.</summary>
    internal static string? TokenProblem(string token)
    {
        if (token.Length == 0) return "is empty";
        var parts = Tokenize(token);
        return parts.Count == 1 && parts[0].Length == token.Length ? null : "is not a single word or punctuation token";
    }
}
