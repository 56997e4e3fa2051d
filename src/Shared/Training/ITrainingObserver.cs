namespace Dtrain.Training;

/// <summary>Receives what a training run does, for progress bars, logs and (later) the coordinator.</summary>
public interface ITrainingObserver
{
    void OnStart(TrainingPlan plan) { }
    void OnStep(StepReport report) { }
    void OnEvaluation(long step, EvalMetrics metrics) { }
    void OnCheckpoint(long step, string path) { }
    void OnMessage(string message) { }
}

/// <summary>What a run is about to do.</summary>
public sealed record TrainingPlan(string Name, string Task, long TotalSteps, long StepsPerEpoch, long StartStep, long Parameters,
    int VocabSize, int Classes, long TrainExamples, string Device, int Threads, string OutputDir);

/// <summary>One finished optimizer step.</summary>
public sealed record StepReport(long Step, long TotalSteps, long Epoch, double Loss, double Lr, double GradNorm, double SamplesPerSecond, TimeSpan Elapsed, TimeSpan? Eta, bool Skipped = false);

/// <summary>How a run ended.</summary>
public sealed record TrainingSummary(long Steps, TimeSpan Elapsed, double SamplesPerSecond, EvalMetrics? Final, string? Checkpoint, string StopReason);
