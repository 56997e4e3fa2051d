using Dtrain.Data;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>The same workload through the engine's ComputeGradients/ApplyGradients step.</summary>
public static class EngineLoop
{
    public static double SecondsPerStep(int vocab, int embed, int hidden, int layers, int batch, int seq, int warmup, int steps)
    {
        var spec = new JobSpec
        {
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = layers, EmbeddingDim = embed, HiddenSize = hidden },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = batch, SeqLen = seq, ClipNorm = 1.0, Seed = 0 },
        };
        using var engine = new TrainingEngine(spec, vocab, 0, CPU);
        var rng = new SplitMix64(0);
        var tokens = Enumerable.Range(0, batch * (seq + 1) * 4).Select(_ => rng.NextInt(vocab)).ToArray();
        var source = new LanguageModelBatches(tokens, batch, seq, LmSamplingKinds.Random, 0);
        var sw = new System.Diagnostics.Stopwatch();
        for (var i = 0; i < warmup + steps; i++)
        {
            if (i == warmup) sw.Start();
            using var b = source.Get(new StepPosition(0, i), 0, batch)!;
            var g = engine.ComputeGradients(b, carryState: false);
            engine.ApplyGradients(g.Count, 2e-3);
        }
        return sw.Elapsed.TotalSeconds / steps;
    }
}
