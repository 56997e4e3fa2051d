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
}
