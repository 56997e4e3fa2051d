using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>The same workload through the engine's ComputeGradients/ApplyGradients step.</summary>
public static class EngineLoop
{
    public static double SecondsPerStep(int vocab, int embed, int hidden, int layers, int batch, int seq, int warmup, int steps, bool perLayer = false)
    {
        var spec = W1.Spec(embed, hidden, layers, batch, seq);
        using var engine = new TrainingEngine(spec, vocab, 0, CPU, perLayer);
        var source = W1.Batches(vocab, batch, seq);
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
