using System.Globalization;
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
    readonly Dictionary<string, int> ids;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> lookup;

    internal WordTokenizer(IReadOnlyList<string> tokens, bool lowercase)
    {
        this.tokens = [.. tokens];
        Lowercase = lowercase;
        this.ids = new Dictionary<string, int>(this.tokens.Length, StringComparer.Ordinal);
        for (var id = 2; id < this.tokens.Length; id++) this.ids[this.tokens[id]] = id;
        this.lookup = this.ids.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    public string Kind => "word";
    public int VocabSize => this.tokens.Length;
    public bool Lowercase { get; }

    /// <summary>Fits the vocabulary to <paramref name="texts"/> (the training split only).</summary>
    public static WordTokenizer Fit(IEnumerable<string> texts, int minFrequency, int maxVocab, bool lowercase)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var counts = new Dictionary<string, long>(StringComparer.Ordinal);
        var lookup = counts.GetAlternateLookup<ReadOnlySpan<char>>();
        var spans = new List<(int Start, int Length)>();
        foreach (var raw in texts)
        {
            ArgumentNullException.ThrowIfNull(raw, nameof(texts));
            var text = lowercase ? raw.ToLowerInvariant() : raw;
            Split(text, spans);
            foreach (var (start, length) in spans)
            {
                var token = text.AsSpan(start, length);
                lookup[token] = lookup.TryGetValue(token, out var c) ? c + 1 : 1;
            }
        }
        return new WordTokenizer(Vocabulary.Build(counts, minFrequency, maxVocab), lowercase);
    }

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (Lowercase) text = text.ToLowerInvariant();
        var spans = new List<(int Start, int Length)>();
        Split(text, spans);
        var ids = new int[spans.Count];
        for (var i = 0; i < ids.Length; i++)
            ids[i] = this.lookup.TryGetValue(text.AsSpan(spans[i].Start, spans[i].Length), out var id) ? id : Vocabulary.UnkId;
        return ids;
    }

    /// <summary>
    /// Encodes <paramref name="text"/> (already lowercased when <see cref="Lowercase"/>) into <paramref name="ids"/> (at
    /// least <c>text.Length</c> long) exactly as <see cref="Encode(string)"/> encodes the same text; returns the number
    /// of ids. <paramref name="spans"/> is scratch space. Splitting a text after a whitespace character and encoding the
    /// pieces gives the same ids as encoding it whole.
    /// </summary>
    internal int EncodeLowered(ReadOnlySpan<char> text, Span<int> ids, List<(int Start, int Length)> spans)
    {
        Split(text, spans);
        if (ids.Length < spans.Count) throw new ArgumentException($"needs room for {spans.Count} ids", nameof(ids));
        for (var i = 0; i < spans.Count; i++)
            ids[i] = this.lookup.TryGetValue(text.Slice(spans[i].Start, spans[i].Length), out var id) ? id : Vocabulary.UnkId;
        return spans.Count;
    }

    /// <summary>Adds the tokens of <paramref name="text"/> (already lowercased when fitting a lowercasing tokenizer) to <paramref name="counts"/>, as <see cref="Fit"/> counts them.</summary>
    internal static void Count(ReadOnlySpan<char> text, Dictionary<string, long> counts, List<(int Start, int Length)> spans)
    {
        var lookup = counts.GetAlternateLookup<ReadOnlySpan<char>>();
        Split(text, spans);
        foreach (var (start, length) in spans)
        {
            var token = text.Slice(start, length);
            lookup[token] = lookup.TryGetValue(token, out var c) ? c + 1 : 1;
        }
    }

    /// <summary>The tokenizer <see cref="Fit"/> would make from texts with these token counts (see <see cref="Count"/>).</summary>
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
        var i = 0;
        while (i < text.Length)
        {
            var r = RuneAt(text, i, out var len);
            if (Rune.IsWhiteSpace(r)) { i += len; continue; }
            var start = i;
            i += len;
            if (IsWordRune(r))
            {
                while (i < text.Length)
                {
                    var next = RuneAt(text, i, out var nlen);
                    if (IsWordRune(next)) { i += nlen; continue; }
                    if (next.Value is '\'' or '\u2019' && i + nlen < text.Length && IsWordRune(RuneAt(text, i + nlen, out var alen)))
                    {
                        i += nlen + alen;
                        continue;
                    }
                    break;
                }
            }
            spans.Add((start, i - start));
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
