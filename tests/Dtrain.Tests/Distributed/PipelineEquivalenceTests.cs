using System.Collections.Concurrent;
using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Tests.Distributed;

/// <summary>
/// Pipeline stages (the stage API, <see cref="StageRunner"/> following a schedule, global-norm clipping) against one
/// process training the whole model: the same parameters after several steps, for K = 2 and 3 stages, M = 1 and 4
/// micro-batches, LSTM and GRU, with the hidden state carried across steps; GPipe and 1F1B bit-identical.
/// </summary>
public class PipelineEquivalenceTests
{
    const int Vocab = 23, Steps = 6, Classes = 3;

    internal static JobSpec Spec(string cell) => new()
    {
        Name = "pipe",
        Task = TaskKinds.LanguageModel,
        Model = new ModelSpec { Cell = cell, Layers = 3, EmbeddingDim = 8, HiddenSize = 16, Dropout = 0 },
        // SGD, not Adam: Adam is blind to a uniform gradient scale, so a wrong clip coefficient would not show.
        Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
        // A small clip norm, so clipping by the combined norm of all stages is exercised at every step.
        Training = new TrainingSpec { BatchSize = 8, SeqLen = 8, ClipNorm = 0.05, Seed = 11, LmSampling = LmSamplingKinds.Stream, Threads = 1 },
    };

    /// <summary>A bidirectional classifier of variable-length sequences (lengths 2..13); 45 examples, batch 8: a short last batch.</summary>
    internal static JobSpec ClassifierSpec(string cell) => Spec(cell) with
    {
        Task = TaskKinds.Classification,
        Model = new ModelSpec { Cell = cell, Layers = 3, EmbeddingDim = 8, HiddenSize = 16, Dropout = 0, Bidirectional = true },
    };

    static IBatchSource Source(JobSpec spec)
    {
        if (spec.Task == TaskKinds.Classification)
        {
            var random = new Random(2);
            var sequences = Enumerable.Range(0, 45).Select(_ => Enumerable.Range(0, random.Next(2, 14)).Select(_ => random.Next(2, Vocab)).ToArray()).ToList();
            var labels = sequences.Select(x => x.Sum() % Classes).ToList();
            return new ClassificationBatches(sequences, labels, spec.Training.BatchSize, spec.Training.Seed);
        }
        var tokens = Enumerable.Range(0, 3000).Select(i => 2 + (i * 7 + i / 5) % (Vocab - 2)).ToArray();
        return new LanguageModelBatches(tokens, spec.Training.BatchSize, spec.Training.SeqLen, spec.Training.LmSampling, spec.Training.Seed);
    }

    static bool IsLm(JobSpec spec) => spec.Task == TaskKinds.LanguageModel;

    static StepPosition At(IBatchSource source, int step) => new(step / source.StepsPerEpoch, step % source.StepsPerEpoch);

    static Dictionary<string, float[]> SingleProcess(JobSpec spec)
    {
        var source = Source(spec);
        using var engine = new TrainingEngine(spec, Vocab, IsLm(spec) ? 0 : Classes, CPU);
        for (var step = 0; step < Steps; step++)
        {
            var position = At(source, step);
            if (position.StepInEpoch == 0) engine.ResetState();
            using var batch = source.Get(position, 0, source.RowsAt(position))!;
            engine.ComputeGradients(batch, carryState: IsLm(spec));
            engine.ApplyGradients(batch.Count, spec.Optimizer.Lr);
        }
        return engine.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter.data<float>().ToArray());
    }

    internal static Task<Dictionary<string, float[]>> Pipelined(JobSpec spec, int stages, int micro, string kind) =>
        Pipelined(spec, stages, micro, kind, _ =>
        {
            var links = new MemoryLinks();
            return [.. Enumerable.Range(0, stages).Select(links.For)];
        });

    /// <summary>Trains with K stages in this process; <paramref name="linksForStep"/> gives each stage its links for a step.</summary>
    internal static async Task<Dictionary<string, float[]>> Pipelined(JobSpec spec, int stages, int micro, string kind, Func<long, IReadOnlyList<IStageLinks>> linksForStep)
    {
        var source = Source(spec);
        var outputs = IsLm(spec) ? Vocab : Classes;
        var plan = PipelinePartitioner.Balanced(ModelLayout.Of(spec.Model, Vocab, outputs), stages);
        var schedule = PipelineSchedule.Create(kind, stages, micro);
        var parts = plan.Select(p => new PipelineStage(spec, Vocab, outputs, p, CPU)).ToList();
        try
        {
            for (var step = 0; step < Steps; step++)
            {
                var position = At(source, step);
                if (position.StepInEpoch == 0) parts.ForEach(p => p.ResetState());
                var rows = source.RowsAt(position);
                var batches = Enumerable.Range(0, micro).Select(m =>
                {
                    var (start, count) = BatchSourceExtensions.RowRange(rows, m, micro);
                    return count == 0 ? null : source.Get(position, start, count);
                }).ToList();
                var links = linksForStep(step);
                var results = await Task.WhenAll(parts.Select(p => Task.Run(() =>
                    StageRunner.RunStepAsync(p, schedule.PerStage[p.Plan.Stage], batches, links[p.Plan.Stage], carryState: IsLm(spec), CancellationToken.None))));
                var globalCount = batches.Sum(b => b?.Count ?? 0);
                Assert.Equal(globalCount, results[^1].Count);
                var norm = Math.Sqrt(parts.Sum(p => p.SquaredGradientNorm(globalCount)));
                foreach (var p in parts) p.Apply(globalCount, spec.Optimizer.Lr, norm);
                Assert.All(parts, p => Assert.Equal(0, p.InFlightCount));
                batches.ForEach(b => b?.Dispose());
            }
            return parts.SelectMany(p => p.NamedParameters()).ToDictionary(p => p.Name, p => p.Parameter.data<float>().ToArray());
        }
        finally
        {
            parts.ForEach(p => p.Dispose());
        }
    }

    public static TheoryData<string, string, int, int> Cases()
    {
        var data = new TheoryData<string, string, int, int>();
        foreach (var task in new[] { TaskKinds.LanguageModel, TaskKinds.Classification })
            foreach (var cell in new[] { CellKinds.Lstm, CellKinds.Gru })
                foreach (var k in new[] { 2, 3 })
                    foreach (var m in new[] { 1, 4 })
                        data.Add(task, cell, k, m);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Stages_train_the_model_one_process_trains(string task, string cell, int stages, int micro)
    {
        var spec = task == TaskKinds.LanguageModel ? Spec(cell) : ClassifierSpec(cell);
        var reference = SingleProcess(spec);
        var gpipe = await Pipelined(spec, stages, micro, PipelineSchedule.GPipeKind);
        var ofob = await Pipelined(spec, stages, micro, PipelineSchedule.OneFOneBKind);
        Assert.Equal(reference.Keys.Order(), gpipe.Keys.Order());
        double maxDiff = 0, maxAbs = 0;
        foreach (var (name, expected) in reference)
        {
            var got = gpipe[name];
            Assert.Equal(expected.Length, got.Length);
            for (var i = 0; i < got.Length; i++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(got[i] - expected[i]));
                maxAbs = Math.Max(maxAbs, Math.Abs(expected[i]));
            }
            // Same accumulation order in both schedules: identical numbers, not merely close ones.
            Assert.Equal(got, ofob[name]);
        }
        Assert.True(maxDiff / maxAbs <= 1e-5, $"{task} {cell}, {stages} stages × {micro} micro-batches: max |dp| / max |p| = {maxDiff / maxAbs:E2}");
    }

    [Theory]
    [InlineData(CellKinds.Lstm)]
    [InlineData(CellKinds.Gru)]
    [InlineData(CellKinds.Rnn)]
    public void Stages_start_from_exactly_the_seeded_whole_models_weights_built_a_layer_at_a_time(string cell)
    {
        var spec = Spec(cell);
        using var whole = Dtrain.Models.ModelFactory.Create(spec, Vocab, 0, CPU);
        var expected = whole.named_parameters().ToDictionary(p => p.name, p => p.parameter.data<float>().ToArray());
        var plan = PipelinePartitioner.FromRanges(ModelLayout.Of(spec.Model, Vocab, Vocab), [(0, 1), (1, 2)]);
        var seen = new HashSet<string>();
        foreach (var p in plan)
        {
            using var stage = new PipelineStage(spec, Vocab, Vocab, p, CPU);
            foreach (var (name, parameter) in stage.NamedParameters())
            {
                Assert.True(seen.Add(name), $"{name} in two stages");
                Assert.Equal(expected[name], parameter.data<float>().ToArray());
            }
        }
        Assert.Equal(expected.Keys.Order(), seen.Order());
    }

    [Fact]
    public void Stage_parameter_names_map_to_the_whole_models()
    {
        Assert.Equal("rnn.lstm.weight_ih_l3", PipelineStage.GlobalName("rnn.lstm.weight_ih_l1", 2));
        Assert.Equal("rnn.gru.bias_hh_l4_reverse", PipelineStage.GlobalName("rnn.gru.bias_hh_l0_reverse", 4));
        Assert.Equal("head.weight", PipelineStage.GlobalName("head.weight", 2));
    }

    /// <summary>Activations and gradients handed between in-process stages (copies, as a network would make).</summary>
    sealed class MemoryLinks
    {
        private readonly ConcurrentDictionary<(char Kind, int To, int Micro), TaskCompletionSource<Tensor>> slots = new();

        private TaskCompletionSource<Tensor> Slot(char kind, int to, int micro) =>
            slots.GetOrAdd((kind, to, micro), _ => new TaskCompletionSource<Tensor>(TaskCreationOptions.RunContinuationsAsynchronously));

        public IStageLinks For(int stage) => new Links(this, stage);

        private sealed class Links(MemoryLinks all, int stage) : IStageLinks
        {
            public Task SendActivationAsync(int micro, Tensor activation, CancellationToken cancel)
            {
                all.Slot('a', stage + 1, micro).SetResult(activation.clone());
                return Task.CompletedTask;
            }

            public Task<Tensor> ReceiveActivationAsync(int micro, CancellationToken cancel) => all.Slot('a', stage, micro).Task;

            public Task SendGradientAsync(int micro, Tensor gradient, CancellationToken cancel)
            {
                all.Slot('g', stage - 1, micro).SetResult(gradient.clone());
                return Task.CompletedTask;
            }

            public Task<Tensor> ReceiveGradientAsync(int micro, CancellationToken cancel) => all.Slot('g', stage, micro).Task;
        }
    }
}
