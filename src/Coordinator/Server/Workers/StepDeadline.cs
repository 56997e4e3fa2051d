namespace Dtrain.Server;

/// <summary>The deadline of a generation's next step, from the steps seen so far (<see cref="StepDeadlineOptions"/>).</summary>
public sealed class StepDeadline(double stepTimeoutSeconds, StepDeadlineOptions options)
{
    private readonly Queue<double> recentMs = new();
    private bool first = true;

    /// <summary>Seconds the next step launched may take (<paramref name="behindAnother"/>: queued behind a step still running).</summary>
    public double Next(bool behindAnother)
    {
        var seconds = first
            ? Math.Max(stepTimeoutSeconds * options.FirstStepFactor, options.FirstStepMinSeconds)
            : Math.Max(stepTimeoutSeconds, options.SlowestFactor * recentMs.DefaultIfEmpty(0).Max() / 1000);
        first = false;
        return seconds * (behindAnother ? options.QueuedFactor : 1);
    }

    /// <summary>A step took <paramref name="ms"/> milliseconds (from when it could start to its last reply).</summary>
    public void Record(double ms)
    {
        recentMs.Enqueue(ms);
        while (recentMs.Count > options.Window) recentMs.Dequeue();
    }
}
