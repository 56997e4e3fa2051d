using Dtrain.Specs;

namespace Dtrain.Training;

/// <summary>
/// A job's steps: how many, how many make an epoch, the learning rate at each, and after which it evaluates and
/// checkpoints — one plan for a local run (<see cref="Trainer"/>) and a cluster's.
/// </summary>
public sealed record StepPlan(long TotalSteps, long StepsPerEpoch, LearningRateSchedule Schedule, int EvalInterval, int CheckpointInterval)
{
    /// <summary>training.max_steps, or training.epochs passes over <paramref name="source"/>; the spec's schedule and intervals.</summary>
    public static StepPlan For(JobSpec spec, IBatchSource source)
    {
        var t = spec.Training;
        var total = t.MaxSteps > 0 ? t.MaxSteps : t.Epochs * source.StepsPerEpoch;
        return new StepPlan(total, source.StepsPerEpoch, new LearningRateSchedule(spec.Schedule, spec.Optimizer.Lr, total), t.EvalInterval, t.CheckpointInterval);
    }

    /// <summary>Where global step <paramref name="step"/> (0-based) falls in the data.</summary>
    public StepPosition PositionOf(long step) => new(step / StepsPerEpoch, step % StepsPerEpoch);

    /// <summary>Whether the job evaluates after <paramref name="done"/> steps: every eval_interval steps and at the end.</summary>
    public bool EvaluatesAfter(long done) => done == TotalSteps || (EvalInterval > 0 && done % EvalInterval == 0);

    /// <summary>Whether the job checkpoints after <paramref name="done"/> steps: every checkpoint_interval steps and at the end.</summary>
    public bool CheckpointsAfter(long done) => done == TotalSteps || (CheckpointInterval > 0 && done % CheckpointInterval == 0);
}
