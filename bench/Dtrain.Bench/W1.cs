using Dtrain.Data;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Bench;

/// <summary>The W1 workload's spec and random data, shared by the loops that time it.</summary>
public static class W1
{
    public static JobSpec Spec(int embed, int hidden, int layers, int batch, int seq) => new()
    {
        Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = layers, EmbeddingDim = embed, HiddenSize = hidden },
        Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
        Training = new TrainingSpec { BatchSize = batch, SeqLen = seq, ClipNorm = 1.0, Seed = 0 },
    };

    /// <summary>Random windows over random tokens: throughput does not depend on content.</summary>
    public static LanguageModelBatches Batches(int vocab, int batch, int seq)
    {
        var rng = new SplitMix64(0);
        var tokens = Enumerable.Range(0, batch * (seq + 1) * 4).Select(_ => rng.NextInt(vocab)).ToArray();
        return new LanguageModelBatches(tokens, batch, seq, LmSamplingKinds.Random, 0);
    }
}
