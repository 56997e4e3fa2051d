using Dtrain.Specs;

namespace Dtrain.Training;

/// <summary>The learning rate at each optimizer step: linear warm-up, then constant, step decay or cosine decay to min_lr.</summary>
public sealed class LearningRateSchedule(ScheduleSpec spec, double baseLr, long totalSteps)
{
    /// <summary>Rate for the 0-based step about to be taken.</summary>
    public double At(long step)
    {
        if (spec.WarmupSteps > 0 && step < spec.WarmupSteps)
            return baseLr * (step + 1) / spec.WarmupSteps;
        var after = step - spec.WarmupSteps;
        switch (spec.Kind)
        {
            case ScheduleKinds.Step:
                return baseLr * Math.Pow(spec.Gamma, after / spec.StepSize);
            case ScheduleKinds.Cosine:
                var span = Math.Max(1, totalSteps - spec.WarmupSteps);
                var progress = Math.Clamp((double)after / span, 0, 1);
                return spec.MinLr + (baseLr - spec.MinLr) * 0.5 * (1 + Math.Cos(Math.PI * progress));
            default:
                return baseLr;
        }
    }
}
