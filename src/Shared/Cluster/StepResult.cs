namespace Dtrain.Cluster;

/// <summary>
/// One worker's part of a step: its loss sum over <see cref="Count"/> tokens or examples of <see cref="Rows"/> rows,
/// timings, the gradient norm (a pipeline stage: the squared norm of its own gradients and its idle time), its
/// parameters' checksum when asked, and whether it skipped the optimizer step for a non-finite value (which).
/// </summary>
public sealed record StepResult
{
    public double LossSum { get; init; }
    public long Count { get; init; }
    public int Rows { get; init; }
    public double GradNorm { get; init; }
    public double ParameterChecksum { get; init; }
    public double ComputeMs { get; init; }
    public double AllreduceMs { get; init; }
    public double SquaredGradNorm { get; init; }
    public double IdleMs { get; init; }
    /// <summary>A dataset job: how long the step waited for its rows to be read (0 when the read was done before the step took them).</summary>
    public double DataWaitMs { get; init; }
    public bool Skipped { get; init; }
    /// <summary>What was not finite when skipped (<see cref="Training.NonFiniteCauses"/>), else "".</summary>
    public string NonFinite { get; init; } = "";
}
