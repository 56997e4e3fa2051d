using TorchSharp.Modules;

namespace Dtrain.Training;

/// <summary>
/// An optimizer's state one parameter at a time (step, moments, momentum buffer — whatever the optimizer keeps), in
/// the order of its parameters. Pipeline stages hand theirs over so the whole model's optimizer can be rebuilt: the
/// whole model's parameter order is the stages' orders one after another.
/// </summary>
public static class OptimizerStateBytes
{
    public static IEnumerable<byte[]> Save(OptimizerHelper optimizer)
    {
        foreach (var state in optimizer.state_dict().State)
        {
            using var ms = new MemoryStream();
            using (var writer = new BinaryWriter(ms, System.Text.Encoding.UTF8, leaveOpen: true)) state.SaveStateDict(writer);
            yield return ms.ToArray();
        }
    }

    /// <summary>Loads per-parameter states (in parameter order) into <paramref name="optimizer"/>; throws naming the parameter when one does not fit.</summary>
    public static void Load(OptimizerHelper optimizer, IReadOnlyList<(string Name, byte[] State)> states)
    {
        var targets = optimizer.state_dict().State;
        if (targets.Count != states.Count) throw new InvalidDataException($"{states.Count} optimizer states for an optimizer of {targets.Count} parameters");
        for (var i = 0; i < states.Count; i++)
        {
            try
            {
                using var reader = new BinaryReader(new MemoryStream(states[i].State));
                targets[i].LoadStateDict(reader);
            }
            catch (Exception e) when (e is EndOfStreamException or ArgumentException or InvalidOperationException or IOException)
            {
                throw new InvalidDataException($"optimizer state of {states[i].Name}: {e.Message}", e);
            }
        }
    }
}
