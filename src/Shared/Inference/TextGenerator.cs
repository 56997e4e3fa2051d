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
    /// given, sees each token as it is drawn (throwing from it stops generating).
    /// </summary>
    public static string Generate(TrainedModel trained, string prompt, int length, double temperature, int topK, long seed, Action<int>? onToken = null)
    {
        using var sequence = Begin(trained, prompt, length, temperature, topK, seed);
        onToken?.Invoke(sequence.Last);
        while (!sequence.Done)
        {
            Step(trained, [sequence]);
            onToken?.Invoke(sequence.Last);
        }
        return sequence.Text();
    }

    /// <summary>
    /// Starts a generation: checks the settings, reads the prompt from a zero state and draws the first token. Then
    /// <see cref="Step"/> draws one more token for each of any number of sequences at once (the model server batches
    /// concurrent generations so), until <see cref="Sequence.Done"/>; <see cref="Sequence.Text"/> is the text.
    /// </summary>
    public static Sequence Begin(TrainedModel trained, string prompt, int length, double temperature, int topK, long seed)
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
        var sequence = new Sequence(tokenizer, prompt, length, temperature, topK, new Generator((ulong)seed));
        try
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var (logits, next) = lm.Forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]).to(device), null);
            sequence.State = next.Detach();
            sequence.Output.Add(Sample(logits[0, -1], temperature, topK, sequence.Random, tokenizer.VocabSize, tokenizer.UnkId));
        }
        catch
        {
            sequence.Dispose();
            throw;
        }
        return sequence;
    }

    /// <summary>
    /// Draws the next token of every sequence not yet done, in one forward pass over all of them (their states stacked
    /// along the batch); each is sampled with its own seeded generator, so a sequence's text does not depend on the
    /// others (up to float rounding: a batch's matrix products may round differently from a single row's).
    /// </summary>
    public static void Step(TrainedModel trained, IReadOnlyList<Sequence> sequences)
    {
        var lm = (RecurrentLanguageModel)trained.Engine.Model;
        var running = sequences.Where(q => !q.Done).ToList();
        if (running.Count == 0) return;
        var device = trained.Engine.Model.parameters().First().device;
        var tokenizer = trained.Tokenizer;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var h = running.Count == 1 ? running[0].State!.H : cat([.. running.Select(q => q.State!.H)], 1);
        var c = running[0].State!.C is null ? null : running.Count == 1 ? running[0].State!.C : cat([.. running.Select(q => q.State!.C!)], 1);
        var (logits, next) = lm.Forward(tensor(running.Select(q => (long)q.Output[^1]).ToArray(), [running.Count, 1]).to(device), new RecurrentState(h, c));
        for (var b = 0; b < running.Count; b++)
        {
            var q = running[b];
            var state = running.Count == 1 ? next : new RecurrentState(next.H.narrow(1, b, 1), next.C?.narrow(1, b, 1));
            q.State!.Dispose();
            q.State = state.Detach();
            q.Output.Add(Sample(logits[b, -1], q.Temperature, q.TopK, q.Random, tokenizer.VocabSize, tokenizer.UnkId));
        }
    }

    /// <summary>A generation in progress (<see cref="Begin"/>): its settings, seeded generator, carried state and tokens so far.</summary>
    public sealed class Sequence : IDisposable
    {
        readonly ITokenizer tokenizer;
        readonly string prompt;

        internal Sequence(ITokenizer tokenizer, string prompt, int length, double temperature, int topK, Generator random)
        {
            this.tokenizer = tokenizer;
            this.prompt = prompt;
            Length = length;
            Temperature = temperature;
            TopK = topK;
            Random = random;
            Output = new List<int>(length);
        }

        public int Length { get; }
        public double Temperature { get; }
        public int TopK { get; }
        internal Generator Random { get; }
        internal RecurrentState? State { get; set; }
        internal List<int> Output { get; }

        /// <summary>Tokens drawn so far.</summary>
        public int Count => Output.Count;

        /// <summary>The token drawn last.</summary>
        public int Last => Output[^1];

        public bool Done => Output.Count >= Length;

        /// <summary>
        /// The tokens drawn so far as text. Words are decoded with a space between them: the first generated word needs
        /// one after the prompt too ("The whale" + "their" would print "The whaletheir").
        /// </summary>
        public string Text()
        {
            var text = tokenizer.Decode(Output);
            return tokenizer is WordTokenizer && prompt.Length > 0 && !char.IsWhiteSpace(prompt[^1]) && text.Length > 0 ? " " + text : text;
        }

        public void Dispose()
        {
            State?.Dispose();
            State = null;
            Random.Dispose();
        }
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
