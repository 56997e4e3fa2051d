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
        var maxLength = info.MaxLength ?? int.MaxValue;
        var sequences = texts.Select(t => tokenizer.Encode(t.Length > maxLength ? t[..maxLength] : t) is { Length: > 0 } ids ? ids : [info.UnkId]).ToArray();
        var time = sequences.Max(s => s.Length);
        var tokens = new DenseTensor<long>([sequences.Length, time]);
        var lengths = new DenseTensor<long>([sequences.Length]);
        for (var i = 0; i < sequences.Length; i++)
        {
            lengths[i] = sequences[i].Length;
            for (var t = 0; t < time; t++) tokens[i, t] = t < sequences[i].Length ? sequences[i][t] : info.PadId;
        }
        return (tokens, lengths);
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
