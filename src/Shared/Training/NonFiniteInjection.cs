using System.Globalization;

namespace Dtrain.Training;

/// <summary>
/// A deliberate fault, to rehearse how training handles a diverging step (tests, failure drills): at the chosen
/// steps this process makes its own loss non-finite (multiplied by NaN before the backward pass, so its gradients
/// are NaN as well) or one element of its gradient infinite (the loss stays finite) — everything after that, the
/// all-reduce, the skip decision, the coordinator's count, is the real path — or, after the step, its parameters NaN
/// (corruption the skip cannot prevent; the next checkpoint must refuse them). Text form: "loss:3,7", "gradient:5",
/// "parameters:2" (steps 1-based, as progress shows them).
/// </summary>
public sealed record NonFiniteInjection(string Cause, IReadOnlySet<long> Steps)
{
    /// <summary>After the step, every parameter of this process is NaN.</summary>
    public const string Parameters = "parameters";
    public static readonly string[] Kinds = [NonFiniteCauses.Loss, NonFiniteCauses.Gradient, Parameters];

    /// <summary>Fills every parameter with NaN (the "parameters" fault).</summary>
    public static void PoisonParameters(IEnumerable<TorchSharp.Modules.Parameter> parameters)
    {
        using var _ = TorchSharp.torch.no_grad();
        using var nan = TorchSharp.ScalarExtensionMethods.ToScalar(double.NaN);
        foreach (var p in parameters) p.fill_(nan);
    }

    /// <summary>Parses "loss:3,7" or "gradient:5"; errors name <paramref name="where"/>.</summary>
    public static NonFiniteInjection Parse(string text, string where)
    {
        var colon = text.IndexOf(':', StringComparison.Ordinal);
        var cause = colon < 0 ? text.Trim() : text[..colon].Trim();
        if (!Kinds.Contains(cause))
            throw new ArgumentException($"{where}: \"{text}\" must be loss:STEPS, gradient:STEPS or parameters:STEPS (steps 1-based, comma-separated), e.g. loss:3,7");
        var steps = new HashSet<long>();
        foreach (var part in colon < 0 ? [] : text[(colon + 1)..].Split(','))
        {
            if (!long.TryParse(part.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var step) || step < 1)
                throw new ArgumentException($"{where}: step \"{part.Trim()}\" in \"{text}\" must be a whole number >= 1");
            steps.Add(step);
        }
        if (steps.Count == 0) throw new ArgumentException($"{where}: \"{text}\" names no step; e.g. {cause}:3");
        return new NonFiniteInjection(cause, steps);
    }

    /// <summary>What to make non-finite at the step with 0-based index <paramref name="stepIndex"/>, or null.</summary>
    public string? At(long stepIndex) => Steps.Contains(stepIndex + 1) ? Cause : null;
}
