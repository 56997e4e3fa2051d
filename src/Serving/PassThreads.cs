using Dtrain.Specs;

namespace Dtrain.Serving;

/// <summary>
/// `serve-model --threads auto`: the torch intra-op threads of each forward pass, chosen from its size. A pass of a
/// small model, or of few texts, runs on the inference thread alone — a second thread costs it more in hand-offs (and
/// in CPU the HTTP side needs) than it saves; a large pass runs on every core. Measured on the project's 2-core machine
/// (docs/benchmarks.md, "--threads auto"): in the server, 2 threads raised a 256x512 classifier's requests/s by a third
/// (passes of 2-4 billion multiply-adds, 50-80 ms on one thread) and cost a 128x256 one 11-20 % (passes of 1 billion).
/// </summary>
public static class PassThreads
{
    /// <summary>The multiply-adds of a pass from which it runs on every core.</summary>
    public const long ParallelWork = 1_500_000_000;

    /// <summary>
    /// The multiply-adds of a forward pass over <paramref name="tokens"/> tokens (every text's tokens, or one per
    /// generation stepped) through the recurrent layers of <paramref name="model"/>: per token, layer and direction,
    /// gates x hidden x (layer input + hidden).
    /// </summary>
    public static long Work(ModelSpec model, long tokens)
    {
        var gates = model.Cell switch { CellKinds.Lstm => 4L, CellKinds.Gru => 3L, _ => 1L };
        var directions = model.Bidirectional ? 2 : 1;
        long perToken = 0;
        long input = model.EmbeddingDim;
        for (var layer = 0; layer < model.Layers; layer++)
        {
            perToken += gates * model.HiddenSize * (input + model.HiddenSize) * directions;
            input = (long)model.HiddenSize * directions;
        }
        return perToken * Math.Max(0, tokens);
    }

    /// <summary>1 for a pass under <paramref name="parallelWork"/> multiply-adds (default <see cref="ParallelWork"/>), else <paramref name="cores"/>.</summary>
    public static int For(ModelSpec model, long tokens, int cores, long parallelWork = ParallelWork) => cores > 1 && Work(model, tokens) >= parallelWork ? cores : 1;
}
