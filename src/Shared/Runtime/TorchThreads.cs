using static TorchSharp.torch;

namespace Dtrain.Runtime;

/// <summary>Sets torch's intra-op thread count: the spec's value, else DTRAIN_THREADS, else torch's default (all cores).</summary>
public static class TorchThreads
{
    public static int Apply(int requested)
    {
        var n = requested;
        if (n <= 0 && int.TryParse(Environment.GetEnvironmentVariable("DTRAIN_THREADS"), out var env) && env > 0) n = env;
        if (n > 0) set_num_threads(n);
        return get_num_threads();
    }
}
