using Dtrain.Distributed.Pipeline;
using Dtrain.Models;
using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Tests.Distributed;

/// <summary>Pipeline schedules as data (GPipe, 1F1B) and the layer partitioner.</summary>
public class PipelinePlanTests
{
    public static TheoryData<int, int> Shapes => new() { { 1, 1 }, { 2, 1 }, { 2, 4 }, { 3, 4 }, { 4, 1 }, { 4, 8 }, { 8, 3 } };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Every_stage_runs_every_forward_and_backward_once_backwards_in_micro_batch_order(int stages, int micro)
    {
        foreach (var kind in PipelineSchedule.Kinds)
        {
            var schedule = PipelineSchedule.Create(kind, stages, micro);
            Assert.Equal(stages, schedule.PerStage.Count);
            for (var s = 0; s < stages; s++)
            {
                var list = schedule.PerStage[s];
                Assert.All(list, a => Assert.Equal(s, a.Stage));
                Assert.Equal(Enumerable.Range(0, micro), list.Where(a => a.Op == PipelineOp.Forward).Select(a => a.MicroBatch));
                // Same accumulation order in both kinds: GPipe and 1F1B give identical gradients.
                Assert.Equal(Enumerable.Range(0, micro), list.Where(a => a.Op == PipelineOp.Backward).Select(a => a.MicroBatch));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Both_schedules_finish_in_2_times_M_plus_K_minus_1_steps_with_the_textbook_bubble(int stages, int micro)
    {
        foreach (var kind in PipelineSchedule.Kinds)
        {
            var timeline = PipelineSchedule.Create(kind, stages, micro).Simulate();
            Assert.Equal(2 * (micro + stages - 1), timeline.Length);
            Assert.Equal((stages - 1.0) / (micro + stages - 1), timeline.BubbleFraction, 12);
            // Dependencies hold in the grid: F(s,m) after F(s-1,m); B(s,m) after F(s,m) and B(s+1,m).
            var at = new Dictionary<PipelineAction, int>();
            for (var t = 0; t < timeline.Length; t++)
                foreach (var a in timeline.Grid[t].OfType<PipelineAction>()) at[a] = t;
            foreach (var (a, t) in at)
            {
                if (a.Op == PipelineOp.Forward && a.Stage > 0) Assert.True(at[a with { Stage = a.Stage - 1 }] < t);
                if (a.Op == PipelineOp.Backward)
                {
                    Assert.True(at[a with { Op = PipelineOp.Forward }] < t);
                    if (a.Stage < stages - 1) Assert.True(at[a with { Stage = a.Stage + 1 }] < t);
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void One_f_one_b_holds_at_most_K_minus_s_activations_gpipe_holds_M(int stages, int micro)
    {
        var gpipe = PipelineSchedule.GPipe(stages, micro);
        var ofob = PipelineSchedule.OneFOneB(stages, micro);
        for (var s = 0; s < stages; s++)
        {
            Assert.Equal(micro, gpipe.PeakInFlight(s));
            Assert.Equal(Math.Min(stages - s, micro), ofob.PeakInFlight(s));
        }
    }

    [Fact]
    public void The_grid_renders_a_row_per_time_step_and_a_column_per_stage()
    {
        var text = PipelineSchedule.OneFOneB(2, 3).Simulate().Render();
        var lines = text.TrimEnd().Split('\n');
        Assert.Equal(1 + 8, lines.Length);
        Assert.Contains("s0", lines[0]);
        Assert.Contains("s1", lines[0]);
        Assert.StartsWith("0     F0", lines[1]);
        Assert.Contains(".", lines[1]);   // stage 1 waits for the first activation
    }

    [Fact]
    public void Unknown_schedules_and_empty_shapes_are_refused()
    {
        Assert.Contains("gpipe, 1f1b", Assert.Throws<ArgumentException>(() => PipelineSchedule.Create("zigzag", 2, 2)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => PipelineSchedule.GPipe(0, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => PipelineSchedule.OneFOneB(2, 0));
    }

    public static TheoryData<string, bool, string> Models => new()
    {
        { CellKinds.Lstm, false, TaskKinds.LanguageModel },
        { CellKinds.Gru, false, TaskKinds.LanguageModel },
        { CellKinds.Rnn, false, TaskKinds.LanguageModel },
        { CellKinds.Lstm, true, TaskKinds.Classification },
        { CellKinds.Gru, true, TaskKinds.Classification },
    };

    [Theory]
    [MemberData(nameof(Models))]
    public void Layout_counts_match_the_model_that_is_built(string cell, bool bidirectional, string task)
    {
        var spec = new JobSpec
        {
            Task = task,
            Model = new ModelSpec { Cell = cell, Layers = 3, EmbeddingDim = 12, HiddenSize = 20, Bidirectional = bidirectional },
        };
        const int vocab = 37, classes = 5;
        var outputs = task == TaskKinds.LanguageModel ? vocab : classes;
        var layout = ModelLayout.Of(spec.Model, vocab, outputs);
        using var model = ModelFactory.Create(spec, vocab, classes, CPU);
        Assert.Equal(ModelFactory.ParameterCount(model), layout.Total);
        Assert.Equal(vocab * 12L, layout.Embedding);
        Assert.Equal(3, layout.Layers.Count);
    }

    [Fact]
    public void Balanced_minimises_the_largest_stage_and_counts_embedding_and_head()
    {
        // 8 equal layers, a heavy embedding: stage 0 takes fewer layers.
        var model = new ModelLayout(Embedding: 250, Layers: [.. Enumerable.Repeat(100L, 8)], Head: 10);
        var plan = PipelinePartitioner.Balanced(model, 4);
        Assert.Equal(1, plan[0].LayerCount);
        Assert.Equal(8, plan.Sum(p => p.LayerCount));
        Assert.Equal(model.Total, plan.Sum(p => p.Parameters));
        Assert.True(plan[0].HasEmbedding && !plan[0].HasHead && plan[^1].HasHead);
        Assert.Equal(350, plan.Max(p => p.Parameters));

        // Against brute force on small random layouts.
        var random = new Random(5);
        for (var trial = 0; trial < 200; trial++)
        {
            var layers = random.Next(1, 8);
            var m = new ModelLayout(random.Next(0, 50), [.. Enumerable.Range(0, layers).Select(_ => (long)random.Next(1, 40))], random.Next(0, 50));
            var k = random.Next(1, layers + 1);
            Assert.Equal(BruteForce(m, k), PipelinePartitioner.Balanced(m, k).Max(p => p.Parameters));
        }
    }

    static long BruteForce(ModelLayout m, int k)
    {
        var best = long.MaxValue;
        void Go(int first, int stage, long worst)
        {
            if (stage == k - 1)
            {
                var last = m.Layers.Skip(first).Sum() + m.Head + (k == 1 ? m.Embedding : 0);
                best = Math.Min(best, Math.Max(worst, last));
                return;
            }
            for (var end = first + 1; end <= m.Layers.Count - (k - 1 - stage); end++)
                Go(end, stage + 1, Math.Max(worst, m.Layers.Skip(first).Take(end - first).Sum() + (stage == 0 ? m.Embedding : 0)));
        }
        Go(0, 0, 0);
        return best;
    }

    [Fact]
    public void Explicit_ranges_must_cover_every_layer_once_in_order()
    {
        var model = new ModelLayout(10, [1, 2, 3, 4], 5);
        var plan = PipelinePartitioner.FromRanges(model, [(0, 1), (1, 3)]);
        Assert.Equal([11L, 14L], plan.Select(p => p.Parameters));
        Assert.Contains("stage 1 starts at layer 3, expected 2", Assert.Throws<ArgumentException>(() => PipelinePartitioner.FromRanges(model, [(0, 2), (3, 1)])).Message);
        Assert.Contains("stage 1 starts at layer 1, expected 2", Assert.Throws<ArgumentException>(() => PipelinePartitioner.FromRanges(model, [(0, 2), (1, 3)])).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => PipelinePartitioner.FromRanges(model, [(0, 0), (0, 4)])).Message);
        Assert.Contains("last stage must end at layer 3", Assert.Throws<ArgumentException>(() => PipelinePartitioner.FromRanges(model, [(0, 1), (1, 2)])).Message);
        Assert.Contains("exceeds model.layers 4", Assert.Throws<ArgumentException>(() => PipelinePartitioner.Balanced(model, 5)).Message);
    }
}
