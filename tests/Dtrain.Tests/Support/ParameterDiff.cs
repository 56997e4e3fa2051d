using static TorchSharp.torch;

namespace Dtrain.Tests.Support;

/// <summary>How far two models' parameters are apart: max |Δp| / max |p| over all parameters, in order.</summary>
public static class ParameterDiff
{
    public static double MaxRelative(IEnumerable<Tensor> reference, IEnumerable<Tensor> other)
    {
        double maxDiff = 0, maxAbs = 0;
        foreach (var (p, q) in reference.Zip(other))
        {
            maxDiff = Math.Max(maxDiff, (p - q).abs().max().item<float>());
            maxAbs = Math.Max(maxAbs, p.abs().max().item<float>());
        }
        return maxDiff / maxAbs;
    }
}
