using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Training;

/// <summary>No checkpoint ever holds non-finite parameters: every capture checks them first.</summary>
public static class FiniteParameters
{
    /// <summary>Throws <see cref="TrainingDivergedException"/> naming the first parameter with NaN or infinite values and how many it holds.</summary>
    public static void ThrowIfAny(IEnumerable<(string Name, Tensor Value)> parameters, long step, JobSpec spec)
    {
        using var _ = no_grad();
        var bad = new List<string>();
        long total = 0;
        foreach (var (name, value) in parameters)
        {
            using var finite = isfinite(value);
            // Disposed after item(): a temporary sum() is garbage during that native call, and a collection started by
            // another thread (a signal handler, an RPC) may free it under libtorch.
            using var count = finite.sum();
            var n = value.numel() - count.item<long>();
            if (n == 0) continue;
            total += n;
            if (bad.Count < 3) bad.Add($"{name} ({n:N0} of {value.numel():N0})");
        }
        if (total == 0) return;
        throw new TrainingDivergedException(
            $"refusing to write a checkpoint at step {step}: {total:N0} parameter value(s) are NaN or infinite ({string.Join(", ", bad)}{(bad.Count == 3 ? ", ..." : "")}); " +
            $"an optimizer step overflowed and training has diverged; the checkpoints already written are intact: {NonFiniteSteps.Remedy(spec)}");
    }
}
