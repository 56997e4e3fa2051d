namespace Dtrain.Data;

/// <summary>Maps text to token ids and back; id 0 is &lt;pad&gt;, id 1 is &lt;unk&gt;, every id is below <see cref="VocabSize"/>.</summary>
public interface ITokenizer
{
    /// <summary>"char" or "word".</summary>
    string Kind { get; }
    int VocabSize { get; }
    int PadId => 0;
    int UnkId => 1;
    int[] Encode(string text);
    string Decode(IEnumerable<int> ids);
    /// <summary>Everything needed to rebuild this tokenizer exactly (saved inside checkpoints).</summary>
    TokenizerState ToState();
}

/// <summary>Serializable tokenizer contents: kind, options and the vocabulary in id order.</summary>
public sealed record TokenizerState(string Kind, bool Lowercase, IReadOnlyList<string> Tokens);
