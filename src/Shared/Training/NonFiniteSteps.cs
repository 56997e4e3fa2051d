using System.Globalization;
using Dtrain.Specs;

namespace Dtrain.Training;

/// <summary>What made a step non-finite: its loss, or (with a finite loss) its gradient.</summary>
public static class NonFiniteCauses
{
    public const string Loss = "loss", Gradient = "gradient";
    public static readonly string[] All = [Loss, Gradient];
}

/// <summary>
/// Training cannot go on sensibly: too many consecutive steps had a non-finite loss or gradient, or the parameters
/// themselves are no longer finite (a checkpoint of them is refused). The message says what and what to change.
/// </summary>
public sealed class TrainingDivergedException(string message) : InvalidOperationException(message);

/// <summary>
/// The rule for non-finite steps, the same in local training and on a cluster: a step whose loss or gradient is not
/// finite is skipped — no parameter and no optimizer state changes, on every replica alike — but counts as a step
/// (the learning-rate schedule and the data order move on); <see cref="TrainingSpec.MaxNonfiniteSteps"/> skipped
/// steps in a row fail the run, naming the step, what was not finite and what to change. The count goes on across a
/// resume from a checkpoint (<paramref name="consecutive"/>: <see cref="TrainingState.NonFiniteStreak"/> of that checkpoint).
/// </summary>
public sealed class NonFiniteSteps(JobSpec spec, int consecutive = 0)
{
    private readonly int max = spec.Training.MaxNonfiniteSteps;

    /// <summary>Skipped steps in a row, up to the last one recorded.</summary>
    public int Consecutive { get; private set; } = Math.Max(0, consecutive);
    /// <summary>Skipped steps in all.</summary>
    public long Skipped { get; private set; }

    /// <summary>
    /// Records step <paramref name="step"/> (1-based, as progress shows it): <paramref name="detail"/> is null when its
    /// optimizer step was applied, else what was not finite. Returns null for an applied step; for a skipped one the
    /// line to show and, when this is one skip too many, the message the run fails with.
    /// </summary>
    public SkippedStep? Record(long step, string? detail)
    {
        if (detail is null)
        {
            Consecutive = 0;
            return null;
        }
        Consecutive++;
        Skipped++;
        var line = $"step {step} skipped: {detail}; no parameter or optimizer state changed ({Consecutive} in a row; the run fails at {max}, training.max_nonfinite_steps)";
        if (Consecutive < max) return new SkippedStep(line, null);
        var which = max == 1 ? $"step {step} was skipped" : $"{max} consecutive steps ({step - max + 1}-{step}) were skipped";
        return new SkippedStep(line, $"{which} for a non-finite loss or gradient (step {step}: {detail}): training is diverging; {Remedy(spec)}");
    }

    /// <summary>What to change when training diverges, with the spec's current values.</summary>
    public static string Remedy(JobSpec spec)
    {
        var clip = spec.Training.ClipNorm;
        return $"lower optimizer.lr (now {G(spec.Optimizer.Lr)}) or " +
            (clip > 0 ? $"lower training.clip_norm (now {G(clip)})" : "enable training.clip_norm (now 0 = off), e.g. 1.0");
    }

    /// <summary>Describes a non-finite value: "NaN", "Infinity", "-Infinity".</summary>
    public static string G(double value) => value.ToString("G4", CultureInfo.InvariantCulture);
}

/// <summary>A skipped step: the line to show, and the failure message when it was one skip too many.</summary>
public sealed record SkippedStep(string Line, string? Failure);
