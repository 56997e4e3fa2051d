namespace Dtrain.Server;

/// <summary>
/// How long a data-parallel step may take before its slowest worker counts as hung (Coordinator:StepDeadline): at
/// least <see cref="CoordinatorOptions.StepTimeoutSeconds"/>, and <see cref="SlowestFactor"/> times the slowest of the
/// last <see cref="Window"/> steps; a generation's first step (warm-up, shards) gets <see cref="FirstStepFactor"/>
/// times the minimum, at least <see cref="FirstStepMinSeconds"/>; a step queued behind another may wait for the whole
/// of the one before it (<see cref="QueuedFactor"/> times its deadline).
/// </summary>
public sealed record StepDeadlineOptions
{
    public double SlowestFactor { get; init; } = 10;
    public int Window { get; init; } = 20;
    public double FirstStepFactor { get; init; } = 6;
    public double FirstStepMinSeconds { get; init; } = 60;
    public double QueuedFactor { get; init; } = 2;

    public IReadOnlyList<string> Validate()
    {
        var e = new List<string>();
        if (!(SlowestFactor >= 1)) e.Add($"Coordinator:StepDeadline:SlowestFactor {SlowestFactor} must be >= 1 (a step may take as long as the slowest recent one)");
        if (Window is < 1 or > 10_000) e.Add($"Coordinator:StepDeadline:Window {Window} must be in [1, 10000] steps");
        if (!(FirstStepFactor >= 1)) e.Add($"Coordinator:StepDeadline:FirstStepFactor {FirstStepFactor} must be >= 1");
        if (!(FirstStepMinSeconds >= 0)) e.Add($"Coordinator:StepDeadline:FirstStepMinSeconds {FirstStepMinSeconds} must be >= 0");
        if (!(QueuedFactor >= 1)) e.Add($"Coordinator:StepDeadline:QueuedFactor {QueuedFactor} must be >= 1 (a queued step waits for the one before it)");
        return e;
    }
}
