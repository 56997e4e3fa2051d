using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Server;

/// <summary>
/// A job's data read and tokenized once, its batches, its step plan (length, learning-rate schedule, evaluations and
/// checkpoints; the same <see cref="StepPlan"/> a local run follows) and where it starts (step 0, or a resumed job's
/// checkpoint step with the time and samples before it): what every way of running it shares.
/// </summary>
public sealed record PreparedJob(PreparedData Data, IBatchSource Source, StepPlan Plan)
{
    public long TotalSteps => Plan.TotalSteps;
    public LearningRateSchedule Schedule => Plan.Schedule;

    /// <summary>The first step to run: 0, or the step of the checkpoint a resumed job starts from.</summary>
    public long StartStep { get; init; }
    /// <summary>Training time and samples before <see cref="StartStep"/> (carried into checkpoints).</summary>
    public double ElapsedBefore { get; init; }
    public long SamplesBefore { get; init; }
    /// <summary>Steps skipped in a row for a non-finite loss or gradient before <see cref="StartStep"/> (the checkpoint's count).</summary>
    public int NonFiniteBefore { get; init; }

    /// <summary>Whether the job evaluates after <paramref name="done"/> steps: every eval_interval steps and at the end (<see cref="StepPlan.EvaluatesAfter"/>).</summary>
    public bool EvaluatesAfter(long done) => Plan.EvaluatesAfter(done);

    /// <summary>Whether the job checkpoints after <paramref name="done"/> steps: every checkpoint_interval steps and at the end (<see cref="StepPlan.CheckpointsAfter"/>).</summary>
    public bool CheckpointsAfter(long done) => Plan.CheckpointsAfter(done);

    public static Task<PreparedJob> LoadAsync(JobRecord job, CancellationToken cancel) => LoadAsync(job, job.Spec, cancel);

    /// <summary>Prepares <paramref name="job"/> reading the data <paramref name="spec"/> names (its own, or the dataset its files were prepared into: <see cref="PreparedUploads"/>).</summary>
    public static async Task<PreparedJob> LoadAsync(JobRecord job, Specs.JobSpec spec, CancellationToken cancel)
    {
        var resume = job.Resume;
        // A resumed job keeps the checkpoint's vocabulary and labels: its token ids are the model's.
        var data = await Task.Run(() => PreparedData.Load(spec, job.Dir, resume?.Tokenizer, resume?.Labels, limits: job.DataLimits, cancel: cancel), cancel).ConfigureAwait(false);
        if (data.Report.Skipped > 0 || data.Report.Truncated > 0)
            job.Log($"data: read {data.Report.Read} records, skipped {data.Report.Skipped}, truncated {data.Report.Truncated}");
        var source = TrainingTasks.For(spec).TrainBatches(spec, data);
        var plan = StepPlan.For(spec, source);
        var total = plan.TotalSteps;
        var start = resume?.State.Step ?? 0;
        if (start >= total)
            throw new JobFailure($"the checkpoint {resume!.Path} is at step {start} and the job has {total} steps: nothing left to train (raise training.max_steps or training.epochs)");
        return new PreparedJob(data, source, plan)
        {
            StartStep = start, ElapsedBefore = resume?.State.ElapsedSeconds ?? 0, SamplesBefore = resume?.State.SamplesSeen ?? 0,
            NonFiniteBefore = resume?.State.NonFiniteStreak ?? 0,
        };
    }
}
