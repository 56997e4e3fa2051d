using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Dtrain.Data;

/// <summary>
/// One token per Unicode scalar value (<see cref="Rune"/>), so surrogate pairs stay whole. Decoding concatenates
/// the tokens: text made only of known characters round-trips exactly. &lt;pad&gt; decodes to nothing,
/// &lt;unk&gt; to U+FFFD. A lone surrogate in the input is read as U+FFFD.
/// </summary>
public sealed class CharTokenizer : ITokenizer
{
    /// <summary>Scalar values below this are looked up in a flat table (the hot path); the rest in a dictionary.</summary>
    const int DenseLimit = 0x3000;

    readonly string[] tokens;
    readonly int[] dense;
    readonly Dictionary<int, int> sparse = [];

    internal CharTokenizer(IReadOnlyList<string> tokens, bool lowercase)
    {
        this.tokens = [.. tokens];
        Lowercase = lowercase;
        var maxDense = 0;
        for (var id = 2; id < this.tokens.Length; id++)
        {
            var v = Rune.GetRuneAt(this.tokens[id], 0).Value;
            if (v < DenseLimit) maxDense = Math.Max(maxDense, v + 1);
        }
        this.dense = new int[maxDense];
        Array.Fill(this.dense, Vocabulary.UnkId);
        for (var id = 2; id < this.tokens.Length; id++)
        {
            var v = Rune.GetRuneAt(this.tokens[id], 0).Value;
            if (v < DenseLimit) this.dense[v] = id;
            else sparse[v] = id;
        }
    }

    public string Kind => "char";
    public int VocabSize => this.tokens.Length;
    public bool Lowercase { get; }

    /// <summary>Fits the vocabulary to <paramref name="texts"/> (the training split only).</summary>
    public static CharTokenizer Fit(IEnumerable<string> texts, int minFrequency, int maxVocab, bool lowercase)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var counts = new Dictionary<int, long>();
        foreach (var text in texts)
        {
            ArgumentNullException.ThrowIfNull(text, nameof(texts));
            for (var i = 0; i < text.Length;)
            {
                var v = NextScalar(text, ref i, lowercase);
                counts[v] = counts.GetValueOrDefault(v) + 1;
            }
        }
        var byString = counts.ToDictionary(kv => new Rune(kv.Key).ToString(), kv => kv.Value, StringComparer.Ordinal);
        return new CharTokenizer(Vocabulary.Build(byString, minFrequency, maxVocab), lowercase);
    }

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new int[text.Length];
        var n = 0;
        var dense = this.dense;
        for (var i = 0; i < text.Length;)
        {
            var v = NextScalar(text, ref i, Lowercase);
            ids[n++] = (uint)v < (uint)dense.Length ? dense[v] : sparse.GetValueOrDefault(v, Vocabulary.UnkId);
        }
        return n == ids.Length ? ids : ids[..n];
    }

    /// <summary>
    /// Encodes <paramref name="text"/> into <paramref name="ids"/> (at least <c>text.Length</c> long) exactly as
    /// <see cref="Encode(string)"/> would; returns the number of ids. Allocates nothing (dtrain prepare's hot path).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot loop: optimized from its first call, not after tiers that threads sharing two cores climb slowly
    public int Encode(ReadOnlySpan<char> text, Span<int> ids)
    {
        if (ids.Length < text.Length) throw new ArgumentException($"needs room for {text.Length} ids", nameof(ids));
        var n = 0;
        var dense = this.dense;
        var lower = Lowercase;
        // Not a surrogate and nothing to lowercase: the scalar value is the character, looked up without bounds checks (the hot path).
        var direct = lower ? 0u : (uint)Math.Min(dense.Length, 0xD800);
        ref var table = ref MemoryMarshal.GetArrayDataReference(dense);
        ref var chars = ref MemoryMarshal.GetReference(text);
        ref var output = ref MemoryMarshal.GetReference(ids);
        for (var i = 0; i < text.Length;)
        {
            uint c = Unsafe.Add(ref chars, i);
            if (c < direct)
            {
                Unsafe.Add(ref output, n++) = Unsafe.Add(ref table, c);
                i++;
                continue;
            }
            var v = NextScalar(text, ref i, lower);
            ids[n++] = (uint)v < (uint)dense.Length ? dense[v] : this.sparse.GetValueOrDefault(v, Vocabulary.UnkId);
        }
        return n;
    }

    /// <summary>Adds the scalar values of <paramref name="text"/> to the counts as <see cref="Fit"/> counts them: below <see cref="CountDenseLimit"/> into <paramref name="dense"/>, the rest into <paramref name="sparse"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // as Encode
    internal static void Count(ReadOnlySpan<char> text, bool lowercase, long[] dense, Dictionary<int, long> sparse)
    {
        var direct = lowercase ? 0u : (uint)Math.Min(dense.Length, 0xD800);
        ref var counts = ref MemoryMarshal.GetArrayDataReference(dense);
        ref var chars = ref MemoryMarshal.GetReference(text);
        for (var i = 0; i < text.Length;)
        {
            uint c = Unsafe.Add(ref chars, i);
            if (c < direct)
            {
                Unsafe.Add(ref counts, c)++;
                i++;
                continue;
            }
            var v = NextScalar(text, ref i, lowercase);
            if ((uint)v < (uint)dense.Length) dense[v]++;
            else sparse[v] = sparse.GetValueOrDefault(v) + 1;
        }
    }

    /// <summary>The size of the dense count table <see cref="Count"/> fills.</summary>
    internal const int CountDenseLimit = DenseLimit;

    /// <summary>The tokenizer <see cref="Fit"/> would make from texts with these counts (see <see cref="Count"/>).</summary>
    internal static CharTokenizer FromCounts(long[] dense, Dictionary<int, long> sparse, int minFrequency, int maxVocab, bool lowercase)
    {
        var byString = new Dictionary<string, long>(StringComparer.Ordinal);
        for (var v = 0; v < dense.Length; v++)
            if (dense[v] > 0) byString[new Rune(v).ToString()] = dense[v];
        foreach (var (v, c) in sparse) byString[new Rune(v).ToString()] = c;
        return new CharTokenizer(Vocabulary.Build(byString, minFrequency, maxVocab), lowercase);
    }

    public string Decode(IEnumerable<int> ids) => Vocabulary.Decode(ids, this.tokens, "\uFFFD", "");

    public TokenizerState ToState() => new(Kind, Lowercase, [.. this.tokens]);

    /// <summary>The scalar value at <paramref name="i"/> (advancing past it); lone surrogates read as U+FFFD.</summary>
    static int NextScalar(ReadOnlySpan<char> s, ref int i, bool lowercase)
    {
        int v = s[i];
        if (!char.IsSurrogate((char)v)) i++;
        else if (char.IsHighSurrogate((char)v) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
        {
            v = char.ConvertToUtf32((char)v, s[i + 1]);
            i += 2;
        }
        else
        {
            v = 0xFFFD;
            i++;
        }
        if (lowercase)
        {
            if (v < 128) { if (v is >= 'A' and <= 'Z') v += 32; }
            else v = Rune.ToLowerInvariant(new Rune(v)).Value;
        }
        return v;
    }

    /// <summary>Why <paramref name="token"/> cannot be a character token, or null.</summary>
    internal static string? TokenProblem(string token) =>
        Rune.DecodeFromUtf16(token, out _, out var used) == System.Buffers.OperationStatus.Done && used == token.Length
            ? null
            : "is not exactly one Unicode scalar value";
}
