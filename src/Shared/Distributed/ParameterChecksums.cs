using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Distributed;

/// <summary>Sum of all parameter values in double precision: copies that took the same steps agree exactly.</summary>
public static class ParameterChecksums
{
    public static double Sum(IEnumerable<Parameter> parameters)
    {
        using var _ = no_grad();
        double sum = 0;
        foreach (var p in parameters) sum += p.to_type(ScalarType.Float64).sum().item<double>();
        return sum;
    }
}
