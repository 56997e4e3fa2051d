using Dtrain.Distributed;
using Dtrain.Runtime;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>The W1 step through a data-parallel replica of a world of one (no network), on a dedicated torch thread: isolates the replica's own overhead.</summary>
public static class ReplicaLoop
{
    public static async Task<double> SecondsPerStep(int vocab, int embed, int hidden, int layers, int batch, int seq, int warmup, int steps, int threads)
    {
        var spec = W1.Spec(embed, hidden, layers, batch, seq);
        using var torch = new TorchThread("bench-torch", threads);
        using var replica = await torch.RunAsync(() => new DataParallelReplica(spec, vocab, 0, CPU, LocalReducer.Instance));
        var source = W1.Batches(vocab, batch, seq);
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
