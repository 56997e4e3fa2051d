using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Dtrain.Runtime;

/// <summary>Turns "cpu" / "cuda" / "cuda:N" into a torch device, falling back to CPU with a message when CUDA is absent.</summary>
public static class DeviceSelector
{
    public static Device Resolve(string requested, Action<string>? warn = null)
    {
        if (requested == "cpu") return CPU;
        if (requested != "cuda" && !requested.StartsWith("cuda:", StringComparison.Ordinal))
            throw new ArgumentException($"device \"{requested}\" must be \"cpu\", \"cuda\" or \"cuda:N\"", nameof(requested));
        var index = 0;
        if (requested != "cuda" && !int.TryParse(requested.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out index))
            throw new ArgumentException($"device \"{requested}\": N in cuda:N must be a device number (0, 1, ...)", nameof(requested));
        if (!cuda.is_available())
        {
            warn?.Invoke($"device {requested} requested but CUDA is not available (this build uses TorchSharp-cpu, or no GPU/driver is present); running on CPU instead");
            return CPU;
        }
        var count = cuda.device_count();
        if (index >= count)
        {
            warn?.Invoke($"device {requested} requested but only {count} CUDA device(s) exist (cuda:0..cuda:{count - 1}); running on CPU instead");
            return CPU;
        }
        return new Device(DeviceType.CUDA, index);
    }
}
