using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>The W1 step through a data-parallel replica of a world of one (no network), on a dedicated torch thread: isolates the replica's own overhead.</summary>
public static class ReplicaLoop
{
    public static async Task<double> SecondsPerStep(int vocab, int embed, int hidden, int layers, int batch, int seq, int warmup, int steps, int threads)
    {
        var spec = new JobSpec
        {
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = layers, EmbeddingDim = embed, HiddenSize = hidden },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = batch, SeqLen = seq, ClipNorm = 1.0, Seed = 0 },
        };
        using var torch = new TorchThread("bench-torch", threads);
        using var replica = await torch.RunAsync(() => new DataParallelReplica(spec, vocab, 0, CPU, LocalReducer.Instance));
        var rng = new SplitMix64(0);
        var tokens = Enumerable.Range(0, batch * (seq + 1) * 4).Select(_ => rng.NextInt(vocab)).ToArray();
        var source = new LanguageModelBatches(tokens, batch, seq, LmSamplingKinds.Random, 0);
        var sw = new System.Diagnostics.Stopwatch();
        for (var i = 0; i < warmup + steps; i++)
        {
            if (i == warmup) sw.Start();
            var rows = source.GetRows(new StepPosition(0, i), 0, batch)!;
            await replica.StepAsync(rows, false, false, rows.Count, 2e-3, i, CancellationToken.None, torch);
        }
        return sw.Elapsed.TotalSeconds / steps;
    }
}
