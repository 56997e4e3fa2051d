using Dtrain.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace Dtrain.Inference;

/// <summary>The inputs of a model exported by <c>dtrain export</c>, as its description (<see cref="OnnxModelInfo"/>) says to feed it.</summary>
internal static class OnnxInputs
{
    /// <summary>
    /// A classifier's batch: each text cut to max_length characters and tokenized (one unk_id for a text without tokens),
    /// padded with pad_id up to the batch's longest — "tokens" (batch, time) and "lengths" (batch).
    /// </summary>
    public static (DenseTensor<long> Tokens, DenseTensor<long> Lengths) Classifier(OnnxModelInfo info, ITokenizer tokenizer, IReadOnlyList<string> texts)
    {
        var (tokens, lengths, time) = ClassifierArrays(info, tokenizer, texts);
        return (new DenseTensor<long>(tokens, [texts.Count, time]), new DenseTensor<long>(lengths, [texts.Count]));
    }

    /// <summary><see cref="Classifier"/>'s batch as flat arrays: tokens (row-major, batch × time) and lengths.</summary>
    public static (long[] Tokens, long[] Lengths, int Time) ClassifierArrays(OnnxModelInfo info, ITokenizer tokenizer, IReadOnlyList<string> texts)
    {
        var maxLength = info.MaxLength ?? int.MaxValue;
        var sequences = new int[texts.Count][];
        var time = 1;
        for (var i = 0; i < sequences.Length; i++)
        {
            var t = texts[i];
            sequences[i] = tokenizer.Encode(t.Length > maxLength ? t[..maxLength] : t) is { Length: > 0 } ids ? ids : [info.UnkId];
            time = Math.Max(time, sequences[i].Length);
        }
        var tokens = new long[sequences.Length * time];
        var lengths = new long[sequences.Length];
        for (var i = 0; i < sequences.Length; i++)
        {
            var row = tokens.AsSpan(i * time, time);
            var s = sequences[i];
            lengths[i] = s.Length;
            for (var t = 0; t < s.Length; t++) row[t] = s[t];
            if (s.Length < time) row[s.Length..].Fill(info.PadId);
        }
        return (tokens, lengths, time);
    }

    /// <summary>A classifier's inputs by name.</summary>
    public static NamedOnnxValue[] Named(DenseTensor<long> tokens, DenseTensor<long> lengths) =>
        [NamedOnnxValue.CreateFromTensor("tokens", tokens), NamedOnnxValue.CreateFromTensor("lengths", lengths)];

    /// <summary>A language model's inputs by name: "tokens" (rows, time) and the state carried in, "h0" and (an LSTM's) "c0".</summary>
    public static NamedOnnxValue[] Named(DenseTensor<long> tokens, DenseTensor<float> h, DenseTensor<float>? c) =>
        c is null
            ? [NamedOnnxValue.CreateFromTensor("tokens", tokens), NamedOnnxValue.CreateFromTensor("h0", h)]
            : [NamedOnnxValue.CreateFromTensor("tokens", tokens), NamedOnnxValue.CreateFromTensor("h0", h), NamedOnnxValue.CreateFromTensor("c0", c)];
}
