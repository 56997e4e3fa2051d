using System.Text.RegularExpressions;
using Dtrain.Models;
using Dtrain.Specs;
using Dtrain.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Dtrain.Training.Tasks;

namespace Dtrain.Distributed.Pipeline;

/// <summary>
/// One pipeline stage of a language model or classifier: the embedding (first stage), recurrent layers [first, end)
/// as one fused module, and the dropout, head and loss (last stage), with its own optimizer over its own parameters.
/// A classifier's stages pass padded per-position outputs on and pack them again with the sequence lengths, so padding
/// never enters the recurrence; the last stage classifies from its last layer's final hidden state. The stage
/// API works on activations: <see cref="Forward"/> of micro-batch m takes token ids (first stage) or the previous
/// stage's activation and returns the activation for the next stage (or the summed loss, last stage);
/// <see cref="Backward"/> of m takes the next stage's activation gradient and returns the gradient for the previous
/// stage. Gradients accumulate over the micro-batches of a step; <see cref="Apply"/> then averages, clips by the
/// global norm (every stage's <see cref="SquaredGradientNorm"/> summed) and steps. Each stage keeps the carried
/// hidden state of its own layers per micro-batch, so truncated BPTT runs exactly as in one process.
/// The weights start as the whole model's (built from the same seed, then sliced), so a pipeline trains the model
/// that one process would.
/// </summary>
public sealed partial class PipelineStage : IDisposable
{
    private readonly JobSpec spec;
    private readonly Device device;
    private readonly StageModule module;
    private readonly IReadOnlyList<Parameter> parameters;
    private readonly Dictionary<int, InFlight> inFlight = [];
    private readonly Dictionary<int, RecurrentState> carried = [];
    /// <summary>Each micro-batch's carried state before this step (null = none), until the step is applied (dropped) or skipped (restored).</summary>
    private readonly Dictionary<int, RecurrentState?> beforeStep = [];

    public StagePlan Plan { get; }
    public bool IsFirst => Plan.HasEmbedding;
    public bool IsLast => Plan.HasHead;
    public optim.Optimizer Optimizer { get; }
    public IReadOnlyList<Parameter> Parameters => parameters;
    /// <summary>Fault drill (<see cref="NonFiniteInjection"/>): while set, <see cref="Forward"/> multiplies its output — the loss, or the activation it sends on — by NaN.</summary>
    public bool InjectNonFinite { get; set; }

    /// <summary>The job's task: what the embedding is, and whether a micro-batch runs as a stream (carrying its hidden state) or as packed sequences.</summary>
    private readonly ITrainingTask task;

    /// <param name="outputs">The head's outputs: the vocabulary size (language model) or the number of classes.</param>
    public PipelineStage(JobSpec spec, int vocabSize, int outputs, StagePlan plan, Device device)
    {
        this.spec = spec;
        task = TrainingTasks.For(spec);
        this.device = device;
        Plan = plan;
        var m = spec.Model;
        if (plan.EndLayer > m.Layers) throw new ArgumentException($"stage {plan.Stage} ends at layer {plan.EndLayer} of a {m.Layers}-layer model");
        module = ModelFactory.Locked(() =>
        {
            // The stage's own initial draws are overwritten; then the whole model's initialisation is replayed piece by
            // piece from the seed, in the order RecurrentLanguageModel draws it (embedding, each layer, head) — one
            // layer at a time, so a stage never holds more than its share plus one layer.
            var built = new StageModule(m, vocabSize, outputs, task, plan);
            var target = built.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            void Take(nn.Module piece, Func<string, string> stageName)
            {
                using var _ = no_grad();
                foreach (var (name, p) in piece.named_parameters())
                {
                    var local = stageName(name);
                    if (!target.Remove(local, out var into)) throw new InvalidOperationException($"whole-model parameter {name} has no stage counterpart {local}");
                    into.copy_(p);
                }
            }
            random.manual_seed(spec.Training.Seed);
            using (var embedding = task.CreateEmbedding(vocabSize, m.EmbeddingDim))
                if (plan.HasEmbedding) Take(embedding, n => $"embedding.{n}");
            var dirs = m.Bidirectional ? 2 : 1;
            for (var layer = 0; layer < m.Layers; layer++)
            {
                using var one = new RecurrentStack(m.Cell, layer == 0 ? m.EmbeddingDim : m.HiddenSize * dirs, m.HiddenSize, 1, m.Dropout, m.Bidirectional, m.GateBias);
                var index = layer - plan.FirstLayer;
                if (index >= 0 && index < plan.LayerCount) Take(one, n => "rnn." + LayerSuffix().Replace(n, _ => $"_l{index}"));
            }
            using (var head = nn.Linear(m.HiddenSize * dirs, outputs))
                if (plan.HasHead) Take(head, n => $"head.{n}");
            if (target.Count > 0) throw new InvalidOperationException($"stage parameters without a whole-model counterpart: {string.Join(", ", target.Keys)}");
            return built;
        });
        module.to(device);
        parameters = [.. module.parameters()];
        Optimizer = OptimizerFactory.Create(spec.Optimizer, parameters);
    }

    /// <summary>The name a stage parameter has in the whole model (and in its checkpoints): layer indices shift by the stage's first layer.</summary>
    public static string GlobalName(string stageName, int firstLayer) =>
        LayerSuffix().Replace(stageName, mm => $"_l{int.Parse(mm.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) + firstLayer}");

    [GeneratedRegex(@"_l(\d+)(?=$|_reverse$)")]
    private static partial Regex LayerSuffix();

    /// <summary>The stage's parameters under their whole-model names.</summary>
    public IEnumerable<(string Name, Parameter Parameter)> NamedParameters() =>
        module.named_parameters().Select(p => (GlobalName(p.name, Plan.FirstLayer), p.parameter));

    /// <summary>The optimizer's state of each parameter, in <see cref="NamedParameters"/> order (TorchSharp's per-parameter format).</summary>
    public IEnumerable<byte[]> OptimizerStates() => OptimizerStateBytes.Save((TorchSharp.Modules.OptimizerHelper)Optimizer);

    /// <summary>Starts a step: zeroes the gradients.</summary>
    public void BeginStep()
    {
        module.train();
        Optimizer.zero_grad();
        SettleCarriedState(restore: false);
    }

    /// <summary>Ends a step for the carried states: kept (applied), or back to what they were before the step (skipped).</summary>
    private void SettleCarriedState(bool restore)
    {
        foreach (var (micro, before) in beforeStep)
        {
            if (!restore)
            {
                before?.Dispose();
                continue;
            }
            if (carried.Remove(micro, out var now)) now.Dispose();
            if (before is not null) carried[micro] = before;
        }
        beforeStep.Clear();
    }

    /// <summary>Forgets every micro-batch's carried hidden state (start of an epoch).</summary>
    public void ResetState()
    {
        SettleCarriedState(restore: false);
        foreach (var s in carried.Values) s.Dispose();
        carried.Clear();
    }

    /// <summary>
    /// Forward of micro-batch <paramref name="micro"/>: <paramref name="input"/> is (B,T) token ids on the first stage,
    /// else the previous stage's (B,T,H) activation. Returns the (B,T,H) activation to send on (detached; the stage
    /// keeps its own graph), or on the last stage the summed loss against <paramref name="targets"/> ((B,T) next tokens,
    /// or (B) labels). A classifier needs the (B) sequence <paramref name="lengths"/> on every stage.
    /// </summary>
    public Tensor Forward(int micro, Tensor input, Tensor? targets, Tensor? lengths, bool carryState)
    {
        if (inFlight.ContainsKey(micro)) throw new InvalidOperationException($"stage {Plan.Stage}: micro-batch {micro} forwarded twice in one step");
        if (IsLast && targets is null) throw new ArgumentNullException(nameof(targets), "the last stage computes the loss: it needs the targets");
        if (!task.PredictsNextToken && lengths is null) throw new ArgumentNullException(nameof(lengths), "a classifier's stages need the sequence lengths");
        using var scope = NewDisposeScope();
        Tensor leaf;
        Tensor x;
        if (IsFirst)
        {
            leaf = input.to(device);
            x = module.Embedding!.call(leaf);
        }
        else
        {
            leaf = input.to(device).detach().requires_grad_(true);
            // Dropout between layers, as the fused stack applies it before every layer but the first.
            x = spec.Model.Dropout > 0 ? nn.functional.dropout(leaf, spec.Model.Dropout, training: true) : leaf;
        }
        var (output, result) = task.PredictsNextToken ? ForwardStream(micro, x, targets, carryState) : ForwardPacked(x, targets, lengths!);
        if (InjectNonFinite)
        {
            using var nan = double.NaN.ToScalar();
            output = output.mul(nan);
            result = output.detach();
        }
        inFlight[micro] = new InFlight(leaf.MoveToOuterDisposeScope(), output.MoveToOuterDisposeScope());
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One stream of text (a language model): the layers run from micro-batch <paramref name="micro"/>'s carried hidden
    /// state (when <paramref name="carryState"/>), and the last stage's loss sums over every position. Returns the output
    /// backward starts from and the detached result <see cref="Forward"/> returns.
    /// </summary>
    private (Tensor Output, Tensor Result) ForwardStream(int micro, Tensor x, Tensor? targets, bool carryState)
    {
        var (y, next) = module.Rnn.Run(x, carryState && carried.TryGetValue(micro, out var state) ? state : null);
        if (carryState)
        {
            // The state before this step is kept until the step is applied or skipped.
            carried.Remove(micro, out var old);
            if (!beforeStep.TryAdd(micro, old)) old?.Dispose();
            carried[micro] = next.Detach();
        }
        if (!IsLast) return (y, y.detach());
        using var dropped = module.Dropout.call(y);
        var logits = module.Head!.call(dropped);
        var loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[^1]), targets!.to(device).reshape(-1), reduction: nn.Reduction.Sum);
        return (loss, loss.detach());
    }

    /// <summary>
    /// Padded sequences of <paramref name="lengths"/> (a classifier): the layers run packed, so padding never enters the
    /// recurrence; the last stage classifies from its last layer's final hidden state. As <see cref="ForwardStream"/> returns.
    /// </summary>
    private (Tensor Output, Tensor Result) ForwardPacked(Tensor x, Tensor? targets, Tensor lengths)
    {
        using var packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first: true, enforce_sorted: false);
        var (packedOut, hidden) = module.Rnn.RunPacked(packed);
        if (IsLast)
        {
            packedOut.Dispose();
            var dirs = module.Rnn.Directions;
            var last = dirs == 1 ? hidden[-1] : cat([hidden[-2], hidden[-1]], dim: 1);
            var logits = module.Head!.call(module.Dropout.call(last));
            var loss = nn.functional.cross_entropy(logits, targets!.to(device), reduction: nn.Reduction.Sum);
            return (loss, loss.detach());
        }
        // Padded again to the input's width, so every stage sees (B, T, H·dirs) and the gradient the same shape.
        var (padded, _) = nn.utils.rnn.pad_packed_sequence(packedOut, batch_first: true, total_length: x.shape[1]);
        packedOut.Dispose();
        return (padded, padded.detach());
    }

    /// <summary>
    /// Backward of micro-batch <paramref name="micro"/>: <paramref name="outputGradient"/> is the gradient of the loss
    /// with respect to this stage's activation (null on the last stage). Returns the gradient with respect to the
    /// stage's input activation, for the previous stage (null on the first stage).
    /// </summary>
    public Tensor? Backward(int micro, Tensor? outputGradient)
    {
        if (!inFlight.Remove(micro, out var f)) throw new InvalidOperationException($"stage {Plan.Stage}: backward of micro-batch {micro} before its forward");
        using (f)
        {
            if (IsLast) f.Output.backward();
            else
            {
                if (outputGradient is null) throw new ArgumentNullException(nameof(outputGradient), "a stage before the last needs the next stage's activation gradient");
                if (!outputGradient.shape.SequenceEqual(f.Output.shape))
                    throw new ArgumentException($"stage {Plan.Stage}: activation gradient of shape [{string.Join(", ", outputGradient.shape)}] for an activation of [{string.Join(", ", f.Output.shape)}]");
                f.Output.backward([outputGradient.to(device)]);
            }
            return IsFirst ? null : f.Input.grad!.detach().clone();
        }
    }

    /// <summary>Micro-batches forwarded and not yet backwarded (their activations are held).</summary>
    public int InFlightCount => inFlight.Count;

    /// <summary>Squared L2 norm of this stage's gradients after dividing by <paramref name="globalCount"/> (double precision).</summary>
    public double SquaredGradientNorm(long globalCount)
    {
        using var _ = no_grad();
        // p.grad and its norm are temporaries used by native calls: kept by the scope until those end (see ParameterChecksums).
        using var scope = NewDisposeScope();
        double sum = 0;
        foreach (var p in parameters)
        {
            if (p.grad is null) continue;
            var n = p.grad.norm().item<float>() / (double)globalCount;
            sum += n * n;
        }
        return sum;
    }

    /// <summary>
    /// Divides the accumulated gradients by <paramref name="globalCount"/>, clips them by the whole model's norm
    /// <paramref name="globalNorm"/> (as clip_grad_norm_ would over all stages' parameters) and steps the optimizer.
    /// </summary>
    public void Apply(long globalCount, double lr, double globalNorm)
    {
        if (globalCount <= 0) throw new ArgumentOutOfRangeException(nameof(globalCount), globalCount, "no samples contributed to this step");
        if (inFlight.Count > 0) throw new InvalidOperationException($"stage {Plan.Stage}: {inFlight.Count} micro-batch(es) still in flight at the optimizer step");
        var scale = 1.0 / globalCount;
        var clip = spec.Training.ClipNorm;
        if (clip > 0)
        {
            var coefficient = clip / (globalNorm + 1e-6);
            if (coefficient < 1) scale *= coefficient;
        }
        using (no_grad())
        {
            // An explicit Scalar kept alive across the calls (see TrainingEngine.ApplyGradients).
            using var factor = scale.ToScalar();
            foreach (var p in parameters)
            {
                if (p.grad is null) p.grad = zeros_like(p);
                else p.grad.mul_(factor);
            }
        }
        SettleCarriedState(restore: false);
        OptimizerFactory.SetLearningRate(Optimizer, lr);
        Optimizer.step();
    }

    /// <summary>
    /// Skips the optimizer step (the step's loss or gradient was not finite somewhere): zeroes the gradients; parameters
    /// and optimizer state stay as they are, and the carried hidden states go back to what they were before the step.
    /// </summary>
    public void Skip()
    {
        if (inFlight.Count > 0) throw new InvalidOperationException($"stage {Plan.Stage}: {inFlight.Count} micro-batch(es) still in flight at the optimizer step");
        Optimizer.zero_grad();
        SettleCarriedState(restore: true);
    }

    public void Dispose()
    {
        foreach (var f in inFlight.Values) f.Dispose();
        inFlight.Clear();
        ResetState();
        Optimizer.Dispose();
        module.Dispose();
    }

    private sealed record InFlight(Tensor Input, Tensor Output) : IDisposable
    {
        public void Dispose()
        {
            Input.Dispose();
            Output.Dispose();
        }
    }

    /// <summary>The stage's modules, named as in <see cref="RecurrentLanguageModel"/> and <see cref="RecurrentClassifier"/> so that names map one to one.</summary>
    private sealed class StageModule : nn.Module
    {
        private readonly Embedding? embedding;
        private readonly RecurrentStack rnn;
        private readonly Dropout dropout;
        private readonly Linear? head;

        public Embedding? Embedding => embedding;
        public RecurrentStack Rnn => rnn;
        public Dropout Dropout => dropout;
        public Linear? Head => head;

        public StageModule(ModelSpec m, int vocabSize, int outputs, ITrainingTask task, StagePlan plan) : base("pipeline_stage")
        {
            var dirs = m.Bidirectional ? 2 : 1;
            if (plan.HasEmbedding) embedding = task.CreateEmbedding(vocabSize, m.EmbeddingDim);
            rnn = new RecurrentStack(m.Cell, plan.HasEmbedding ? m.EmbeddingDim : m.HiddenSize * dirs, m.HiddenSize, plan.LayerCount, m.Dropout, m.Bidirectional, m.GateBias);
            dropout = nn.Dropout(m.Dropout);
            if (plan.HasHead) head = nn.Linear(m.HiddenSize * dirs, outputs);
            RegisterComponents();
        }
    }
}
