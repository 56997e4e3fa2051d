using Dtrain.Training;

namespace Dtrain.Bench;

/// <summary>Remembers when a run finished its warm-up step and its last step.</summary>
sealed class StepClock(long warmup, long last) : ITrainingObserver
{
    public TimeSpan Start { get; private set; }
    public TimeSpan End { get; private set; }

    public void OnStep(StepReport report)
    {
        if (report.Step == warmup) Start = report.Elapsed;
        if (report.Step == last) End = report.Elapsed;
    }
}
