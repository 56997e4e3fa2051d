using Dtrain.Specs;

namespace Dtrain.Distributed.Pipeline;

/// <summary>Where a model's parameters are: the embedding, each recurrent layer, the output head.</summary>
public sealed record ModelLayout(long Embedding, IReadOnlyList<long> Layers, long Head)
{
    public long Total => Embedding + Layers.Sum() + Head;

    /// <summary>
    /// The parameter counts of the model <see cref="Models.ModelFactory"/> builds for <paramref name="spec"/>: per
    /// layer and direction, G gates × H × (input + H) weights and two bias vectors of G × H (G = 4 LSTM, 3 GRU, 1 RNN).
    /// </summary>
    public static ModelLayout Of(ModelSpec spec, int vocabSize, int outputs)
    {
        var gates = spec.Cell switch
        {
            CellKinds.Lstm => 4,
            CellKinds.Gru => 3,
            CellKinds.Rnn => 1,
            _ => throw new ArgumentException($"unknown cell \"{spec.Cell}\"; allowed: {string.Join(", ", CellKinds.All)}", nameof(spec)),
        };
        var dirs = spec.Bidirectional ? 2 : 1;
        long h = spec.HiddenSize;
        var layers = Enumerable.Range(0, spec.Layers).Select(l =>
        {
            long input = l == 0 ? spec.EmbeddingDim : h * dirs;
            return dirs * (gates * h * (input + h) + 2 * gates * h);
        }).ToList();
        return new ModelLayout((long)vocabSize * spec.EmbeddingDim, layers, h * dirs * outputs + outputs);
    }
}

/// <summary>One pipeline stage: a contiguous range of recurrent layers, plus the embedding (first stage) or the head and loss (last stage).</summary>
public sealed record StagePlan(int Stage, int FirstLayer, int LayerCount, long Parameters, bool HasEmbedding, bool HasHead)
{
    public int EndLayer => FirstLayer + LayerCount;
}

/// <summary>Splits a model's layers into pipeline stages.</summary>
public static class PipelinePartitioner
{
    /// <summary>
    /// "balanced": contiguous ranges of at least one layer each that minimise the largest stage's parameter count,
    /// counting the embedding with stage 0 and the head with the last stage.
    /// </summary>
    public static IReadOnlyList<StagePlan> Balanced(ModelLayout model, int stages)
    {
        var layers = model.Layers.Count;
        CheckStages(stages, layers);
        // best[k, i]: the smallest possible largest stage when layers [0, i) form stages [0, k).
        var best = new long[stages + 1, layers + 1];
        var cut = new int[stages + 1, layers + 1];
        for (var k = 0; k <= stages; k++)
            for (var i = 0; i <= layers; i++) best[k, i] = long.MaxValue;
        best[0, 0] = 0;
        var prefix = new long[layers + 1];
        for (var i = 0; i < layers; i++) prefix[i + 1] = prefix[i] + model.Layers[i];
        for (var k = 1; k <= stages; k++)
        {
            for (var i = k; i <= layers - (stages - k); i++)
            {
                for (var j = k - 1; j < i; j++)
                {
                    if (best[k - 1, j] == long.MaxValue) continue;
                    var cost = prefix[i] - prefix[j] + (k == 1 ? model.Embedding : 0) + (k == stages ? model.Head : 0);
                    var worst = Math.Max(best[k - 1, j], cost);
                    if (worst < best[k, i]) { best[k, i] = worst; cut[k, i] = j; }
                }
            }
        }
        var ranges = new (int First, int Count)[stages];
        for (int k = stages, end = layers; k >= 1; k--)
        {
            var start = cut[k, end];
            ranges[k - 1] = (start, end - start);
            end = start;
        }
        return FromRanges(model, ranges);
    }

    /// <summary>Stages from explicit layer ranges, which must cover every layer once, in order, each with at least one layer.</summary>
    public static IReadOnlyList<StagePlan> FromRanges(ModelLayout model, IReadOnlyList<(int First, int Count)> ranges)
    {
        var layers = model.Layers.Count;
        CheckStages(ranges.Count, layers);
        var expected = 0;
        for (var s = 0; s < ranges.Count; s++)
        {
            var (first, count) = ranges[s];
            if (count < 1) throw new ArgumentException($"stage {s}: layer range [{first}, {first + count}) is empty; every stage needs at least one layer");
            if (first != expected) throw new ArgumentException($"stage {s} starts at layer {first}, expected {expected}: the ranges must cover layers 0..{layers - 1} in order, without gaps or overlaps");
            expected = first + count;
        }
        if (expected != layers) throw new ArgumentException($"the stages cover layers 0..{expected - 1} of the model's {layers}: the last stage must end at layer {layers - 1}");
        var last = ranges.Count - 1;
        return [.. ranges.Select((r, s) => new StagePlan(s, r.First, r.Count,
            model.Layers.Skip(r.First).Take(r.Count).Sum() + (s == 0 ? model.Embedding : 0) + (s == last ? model.Head : 0),
            HasEmbedding: s == 0, HasHead: s == last))];
    }

    private static void CheckStages(int stages, int layers)
    {
        if (stages < 1) throw new ArgumentException($"pipeline.stages {stages} must be at least 1");
        if (stages > layers) throw new ArgumentException($"pipeline.stages {stages} exceeds model.layers {layers}: every stage needs at least one recurrent layer");
    }
}
