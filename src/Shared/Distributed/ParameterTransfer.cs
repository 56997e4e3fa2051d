using System.Runtime.InteropServices;
using Dtrain.Cluster;
using Dtrain.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Distributed;

/// <summary>
/// Parameters and their optimizer state as <see cref="ParameterTensor"/>s under whole-model names: how a
/// pipeline stage hands its share to the coordinator, and how a resumed job's checkpoint reaches every replica or
/// stage. Everything a tensor says is checked in managed code before it touches a tensor (a libtorch error would
/// abort the process).
/// </summary>
public static class ParameterTransfer
{
    /// <summary>Each parameter (in order) with its values and the optimizer's state of it.</summary>
    public static List<ParameterTensor> Capture(IEnumerable<(string Name, Parameter Parameter)> parameters, OptimizerHelper optimizer)
    {
        var named = parameters.ToList();
        var states = OptimizerStateBytes.Save(optimizer).ToList();
        if (states.Count != named.Count) throw new InvalidOperationException($"{states.Count} optimizer states for {named.Count} parameters");
        return [.. named.Zip(states).Select(x =>
        {
            var ((name, p), state) = x;
            using var cpu = p.detach().cpu().contiguous();
            return new ParameterTensor(name, [.. p.shape], MemoryMarshal.AsBytes(cpu.data<float>().ToArray().AsSpan()).ToArray(), state);
        })];
    }

    /// <summary>
    /// Copies the values and optimizer state of every parameter in <paramref name="parameters"/> from
    /// <paramref name="tensors"/> (keyed by whole-model name): into a replica or stage from a checkpoint, and into the
    /// coordinator's whole model from every pipeline stage (the gather). Tensors this holder does not hold are ignored,
    /// unless <paramref name="exact"/> (the gather: every tensor must be one of its parameters). Non-finite values are
    /// refused unless <paramref name="allowNonFinite"/> (the gather leaves them to the checkpoint guard, which says so).
    /// Throws <see cref="InvalidDataException"/> naming the parameter when one is missing, extra or does not fit.
    /// </summary>
    public static void Load(IEnumerable<(string Name, Parameter Parameter)> parameters, OptimizerHelper optimizer, IReadOnlyDictionary<string, ParameterTensor> tensors,
        bool exact = false, bool allowNonFinite = false)
    {
        var named = parameters.ToList();
        var values = new List<float[]>(named.Count);
        foreach (var (name, p) in named)
        {
            if (!tensors.TryGetValue(name, out var t)) throw new InvalidDataException($"no value for parameter {name}");
            if (!t.Shape.SequenceEqual(p.shape))
                throw new InvalidDataException($"parameter {name} has shape [{string.Join(", ", t.Shape)}], this model's is [{string.Join(", ", p.shape)}]");
            if (t.Values.Length != p.numel() * sizeof(float))
                throw new InvalidDataException($"parameter {name}: {t.Values.Length} bytes for {p.numel()} float32 values");
            var v = t.Floats.ToArray();
            if (!allowNonFinite && v.Any(x => !float.IsFinite(x))) throw new InvalidDataException($"parameter {name} holds non-finite values");
            values.Add(v);
        }
        if (exact && tensors.Keys.Except(named.Select(n => n.Name), StringComparer.Ordinal).ToList() is { Count: > 0 } extra)
            throw new InvalidDataException($"unexpected parameters {string.Join(", ", extra)}");
        // The optimizer state first: if it does not fit, the parameters are left as they were.
        OptimizerStateBytes.Load(optimizer, [.. named.Select(n => (n.Name, tensors[n.Name].OptimizerState.ToArray()))]);
        using (no_grad())
        {
            for (var i = 0; i < named.Count; i++)
            {
                var p = named[i].Parameter;
                using var source = tensor(values[i], p.shape);
                p.copy_(source);
            }
        }
    }
}
