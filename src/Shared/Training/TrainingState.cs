namespace Dtrain.Training;

/// <summary>Where training stands: everything besides tensors that a resumed run needs to continue exactly.</summary>
public sealed record TrainingState
{
    /// <summary>Optimizer steps taken so far (the next step to run has this 0-based index).</summary>
    public long Step { get; init; }
    public long SamplesSeen { get; init; }
    public double ElapsedSeconds { get; init; }
    public double LastLr { get; init; }
    public EvalMetrics? LastEval { get; init; }
    /// <summary>
    /// Steps skipped in a row for a non-finite loss or gradient up to <see cref="Step"/> (<see cref="NonFiniteSteps"/>):
    /// a resumed run goes on counting from here, so training.max_nonfinite_steps holds across resumes and restarts.
    /// </summary>
    public int NonFiniteStreak { get; init; }
}
