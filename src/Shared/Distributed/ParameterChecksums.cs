using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Distributed;

/// <summary>Sum of all parameter values in double precision: copies that took the same steps agree exactly.</summary>
public static class ParameterChecksums
{
    public static double Sum(IEnumerable<Parameter> parameters)
    {
        using var _ = no_grad();
        // The float64 copies and their sums are temporaries used by native calls: kept by the scope until those end
        // (unreferenced, a collection started by another thread could free one mid-call), then freed at once.
        using var scope = NewDisposeScope();
        double sum = 0;
        foreach (var p in parameters) sum += p.to_type(ScalarType.Float64).sum().item<double>();
        return sum;
    }

    /// <summary>
    /// Whether checksum <paramref name="other"/> agrees with <paramref name="reference"/>: within 1e-9 of it, relative to
    /// its size (at least 1). Copies summed in another order (stages, a gathered model) differ only in rounding.
    /// </summary>
    public static bool Agree(double other, double reference) => !(Math.Abs(other - reference) > 1e-9 * Math.Max(1.0, Math.Abs(reference)));
}
