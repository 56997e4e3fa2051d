using Dtrain.Data;
using Dtrain.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Dtrain.Inference;

/// <summary>Samples text from a language model: temperature (0 = greedy) and top-k, seeded.</summary>
public static class TextGenerator
{
    public const int MaxTokens = 100_000;

    /// <summary>
    /// The text <paramref name="length"/> tokens long that follows <paramref name="prompt"/>; <paramref name="onToken"/>, when
    /// given, sees each token as it is drawn (the model server streams them; throwing from it stops generating).
    /// </summary>
    public static string Generate(TrainedModel trained, string prompt, int length, double temperature, int topK, long seed, Action<int>? onToken = null)
    {
        if (trained.Engine.Model is not RecurrentLanguageModel lm)
            throw new ArgumentException($"{trained.Path} holds a {trained.Spec.Task} model; generate needs a language_model checkpoint");
        if (length is < 1 or > MaxTokens) throw new ArgumentException($"--length {length} must be in [1, {MaxTokens}]");
        if (!(temperature >= 0 && double.IsFinite(temperature))) throw new ArgumentException($"--temperature {temperature} must be >= 0");
        if (topK < 0) throw new ArgumentException($"--top-k {topK} must be >= 0 (0 = no limit)");
        var tokenizer = trained.Tokenizer;
        var ids = tokenizer.Encode(prompt);
        if (ids.Length == 0) ids = [StartToken(trained)];
        var device = trained.Engine.Model.parameters().First().device;
        var gen = new Generator((ulong)seed);
        var output = new List<int>(length);
        using var noGrad = no_grad();
        RecurrentState? state = null;
        try
        {
            using (var scope = NewDisposeScope())
            {
                var (logits, next) = lm.Forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]).to(device), null);
                state = next.Detach();
                output.Add(Sample(logits[0, -1], temperature, topK, gen, tokenizer.VocabSize, tokenizer.UnkId));
                onToken?.Invoke(output[^1]);
            }
            while (output.Count < length)
            {
                using var scope = NewDisposeScope();
                var (logits, next) = lm.Forward(tensor(new long[] { output[^1] }, [1, 1]).to(device), state);
                state.Dispose();
                state = next.Detach();
                output.Add(Sample(logits[0, -1], temperature, topK, gen, tokenizer.VocabSize, tokenizer.UnkId));
                onToken?.Invoke(output[^1]);
            }
        }
        finally
        {
            state?.Dispose();
        }
        var text = tokenizer.Decode(output);
        // Words are decoded with a space between them: the first generated word needs one after the prompt too
        // ("The whale" + "their" would print "The whaletheir").
        return tokenizer is WordTokenizer && prompt.Length > 0 && !char.IsWhiteSpace(prompt[^1]) && text.Length > 0 ? " " + text : text;
    }

    /// <summary>With no prompt, start from a newline when the vocabulary has one, else from the most frequent token.</summary>
    private static int StartToken(TrainedModel trained)
    {
        var nl = trained.Tokenizer.Encode("\n");
        return nl.Length == 1 && nl[0] != trained.Tokenizer.UnkId ? nl[0] : Math.Min(2, trained.Tokenizer.VocabSize - 1);
    }

    /// <summary>
    /// The next token from one position's logits (vocab), as <see cref="Generate"/> draws it: never &lt;pad&gt; or &lt;unk&gt;,
    /// greedy at temperature 0, else from the top-k softmax with <paramref name="gen"/> (a model run elsewhere, e.g. an
    /// exported ONNX model, samples the same text from the same logits and seed).
    /// </summary>
    public static int Sample(Tensor logits, double temperature, int topK, Generator gen, int vocab, int unk)
    {
        // In float64 and from the largest logit down, so that no temperature in range overflows: (x - max) / T is 0 for
        // the most likely token and at most 0 for every other, -inf at worst; softmax of that is always a distribution.
        logits = logits.to_type(ScalarType.Float64);
        if (logits.isnan().any().item<bool>() || logits.isposinf().any().item<bool>())
            throw new InvalidDataException("the model's output is not finite (the checkpoint's weights have diverged): nothing to sample from");
        // Never emit <pad> or <unk>: neither is text (<unk> would print as \uFFFD).
        // Explicit Scalars, alive until the sample is drawn (an implicit temporary may be finalized during the call).
        using var never = double.NegativeInfinity.ToScalar();
        using var t = temperature.ToScalar();
        logits[0].fill_(never);
        if (unk > 0 && unk < vocab && vocab > 2) logits[unk].fill_(never);
        if (temperature == 0) return (int)logits.argmax().item<long>();
        logits = (logits - logits.max()).div_(t);
        if (topK > 0 && topK < vocab)
        {
            var kth = logits.topk(topK).values[-1];
            logits = logits.masked_fill(logits < kth, never);
        }
        var probs = nn.functional.softmax(logits, 0);
        return (int)multinomial(probs, 1, generator: gen).item<long>();
    }
}
