namespace Dtrain.Data;

/// <summary>Builds and checks the token lists shared by the tokenizers: id 0 = &lt;pad&gt;, id 1 = &lt;unk&gt;, then the rest.</summary>
public static class Vocabulary
{
    public const string Pad = "<pad>";
    public const string Unk = "<unk>";
    public const int PadId = 0;
    public const int UnkId = 1;

    /// <summary>
    /// The specials, then the tokens counted at least <paramref name="minFrequency"/> times by descending count,
    /// ties in ordinal string order; at most <paramref name="maxVocab"/> entries in all (0 = no limit).
    /// </summary>
    public static List<string> Build(IReadOnlyDictionary<string, long> counts, int minFrequency, int maxVocab)
    {
        if (maxVocab is < 0 or 1 or 2)
            throw new ArgumentOutOfRangeException(nameof(maxVocab), maxVocab, "max_vocab must be 0 (no limit) or at least 3: <pad> and <unk> take two ids");
        var minCount = Math.Max(1, minFrequency);
        var ranked = counts
            .Where(kv => kv.Value >= minCount && kv.Key != Pad && kv.Key != Unk)
            .OrderByDescending(kv => kv.Value)
            .ThenBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => kv.Key);
        if (maxVocab > 0) ranked = ranked.Take(maxVocab - 2);
        return [Pad, Unk, .. ranked];
    }

    /// <summary>Checks the shape every tokenizer relies on; <paramref name="tokenProblem"/> returns why a token is invalid, or null.</summary>
    internal static void Validate(IReadOnlyList<string?>? tokens, string kind, Func<string, string?> tokenProblem)
    {
        if (tokens is null) throw new InvalidDataException($"{kind} tokenizer state has no token list");
        if (tokens.Count < 2) throw new InvalidDataException($"{kind} tokenizer state has {tokens.Count} tokens; it needs at least <pad> and <unk>");
        if (tokens[0] != Pad) throw new InvalidDataException($"{kind} tokenizer state: token 0 must be \"{Pad}\", found \"{tokens[0]}\"");
        if (tokens[1] != Unk) throw new InvalidDataException($"{kind} tokenizer state: token 1 must be \"{Unk}\", found \"{tokens[1]}\"");
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i] ?? throw new InvalidDataException($"{kind} tokenizer state: token {i} is null");
            if (!seen.Add(t)) throw new InvalidDataException($"{kind} tokenizer state: token {i} \"{t}\" is a duplicate");
            if (i >= 2 && tokenProblem(t) is { } problem)
                throw new InvalidDataException($"{kind} tokenizer state: token {i} \"{t}\" {problem}");
        }
    }

    internal static string Decode(IEnumerable<int> ids, IReadOnlyList<string> tokens, string unkText, string separator)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var sb = new System.Text.StringBuilder();
        var first = true;
        foreach (var id in ids)
        {
            if ((uint)id >= (uint)tokens.Count)
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"token id outside the vocabulary [0, {tokens.Count})");
            if (id == PadId) continue;
            if (!first) sb.Append(separator);
            sb.Append(id == UnkId ? unkText : tokens[id]);
            first = false;
        }
        return sb.ToString();
    }
}
