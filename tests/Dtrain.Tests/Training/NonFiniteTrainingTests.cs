using Dtrain.Checkpoints;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Training;

/// <summary>
/// Local training and a non-finite loss or gradient: the step is skipped (no parameter or optimizer state changes, the
/// schedule and data order move on), too many in a row fail the run naming the step, the cause and the remedy, and no
/// checkpoint is ever written with non-finite parameters.
/// </summary>
public class NonFiniteTrainingTests
{
    static JobSpec Spec(TempDir tmp, int steps = 8)
    {
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: steps);
        // A cosine schedule: every step has its own rate, so a schedule that stood still over a skipped step would show.
        return spec with { Schedule = new ScheduleSpec { Kind = ScheduleKinds.Cosine }, Training = spec.Training with { CheckpointInterval = 1, KeepCheckpoints = 100 } };
    }

    static CheckpointData Checkpoint(string dir, long step)
    {
        var path = Path.Combine(dir, "checkpoints", $"ckpt-{step:D9}.dtck");
        using var file = File.OpenRead(path);
        return CheckpointFormat.Read(file, path);
    }

    sealed class Recorder : ITrainingObserver
    {
        public List<StepReport> Steps { get; } = [];
        public List<string> Messages { get; } = [];
        public void OnStep(StepReport report) => Steps.Add(report);
        public void OnMessage(string message) => Messages.Add(message);
    }

    [Theory]
    [InlineData(NonFiniteCauses.Loss, "non-finite loss (NaN)")]
    [InlineData(NonFiniteCauses.Gradient, "non-finite gradient (norm Infinity)")]
    public void A_non_finite_step_is_skipped_without_touching_parameters_or_optimizer_state_and_training_goes_on(string cause, string detail)
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        var dir = Path.Combine(tmp.Path, "run");
        var seen = new Recorder();
        var summary = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = dir, InjectNonFinite = NonFiniteInjection.Parse($"{cause}:5", "test") }, seen, CancellationToken.None);

        Assert.Equal(8, summary.Steps);
        Assert.Equal("finished", summary.StopReason);
        Assert.Equal(Enumerable.Range(1, 8).Select(i => (long)i), seen.Steps.Select(s => s.Step));
        Assert.Equal([5L], seen.Steps.Where(s => s.Skipped).Select(s => s.Step));
        // A skipped step counts: the schedule moves on over it (step 6 runs at step 6's rate, not at step 5's).
        var schedule = new LearningRateSchedule(spec.Schedule, spec.Optimizer.Lr, 8);
        Assert.Equal(Enumerable.Range(0, 8).Select(i => schedule.At(i)), seen.Steps.Select(s => s.Lr));
        Assert.Contains(seen.Messages, m => m.StartsWith($"step 5 skipped: {detail}; no parameter or optimizer state changed (1 in a row; the run fails at 5", StringComparison.Ordinal));

        // The state after step 5 is, byte for byte, the state after step 4; step 6 trains again.
        var (four, five, six) = (Checkpoint(dir, 4), Checkpoint(dir, 5), Checkpoint(dir, 6));
        Assert.Equal(four.Sections[TrainingCheckpoint.Model], five.Sections[TrainingCheckpoint.Model]);
        Assert.Equal(four.Sections[TrainingCheckpoint.Optimizer], five.Sections[TrainingCheckpoint.Optimizer]);
        // The hidden state carried to the next chunk is the one from before the skipped step, too.
        Assert.Equal(four.Sections[TrainingCheckpoint.Carried], five.Sections[TrainingCheckpoint.Carried]);
        Assert.NotEqual(five.Sections[TrainingCheckpoint.Carried], six.Sections[TrainingCheckpoint.Carried]);
        Assert.NotEqual(five.Sections[TrainingCheckpoint.Model], six.Sections[TrainingCheckpoint.Model]);
        Assert.NotEqual(five.Sections[TrainingCheckpoint.Optimizer], six.Sections[TrainingCheckpoint.Optimizer]);

        // Without the fault, step 5 changes the parameters (the comparison above would have caught a step taken).
        var clean = Path.Combine(tmp.Path, "clean");
        Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 5 } }, tmp.Path, new TrainOptions { OutputDir = clean }, new Recorder(), CancellationToken.None);
        Assert.NotEqual(Checkpoint(clean, 4).Sections[TrainingCheckpoint.Model], Checkpoint(clean, 5).Sections[TrainingCheckpoint.Model]);
    }

    [Fact]
    public void Max_nonfinite_steps_in_a_row_fail_the_run_naming_the_steps_the_cause_and_the_remedy_while_a_break_resets_the_count()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        spec = spec with { Training = spec.Training with { MaxNonfiniteSteps = 3, CheckpointInterval = 0 } };
        var e = Assert.Throws<TrainingDivergedException>(() =>
            Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "a"), InjectNonFinite = NonFiniteInjection.Parse("loss:3,4,5", "test") }, new Recorder(), CancellationToken.None));
        Assert.Equal("3 consecutive steps (3-5) were skipped for a non-finite loss or gradient (step 5: non-finite loss (NaN)): training is diverging; " +
            "lower optimizer.lr (now 0.01) or lower training.clip_norm (now 1)", e.Message);
        // The failed run wrote no checkpoint at all (there was no interval checkpoint to write before step 5).
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "a", "checkpoints")) && Directory.EnumerateFiles(Path.Combine(tmp.Path, "a", "checkpoints"), "*.dtck").Any());

        // Three skips, but not in a row: the run finishes.
        var seen = new Recorder();
        var summary = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "b"), InjectNonFinite = NonFiniteInjection.Parse("loss:3,4,6,7", "test") }, seen, CancellationToken.None);
        Assert.Equal(8, summary.Steps);
        Assert.Equal([3L, 4L, 6L, 7L], seen.Steps.Where(s => s.Skipped).Select(s => s.Step));
        Assert.Contains(seen.Messages, m => m.Contains("step 7 skipped", StringComparison.Ordinal) && m.Contains("(2 in a row; the run fails at 3", StringComparison.Ordinal));
    }

    [Fact]
    public void The_count_of_skipped_steps_in_a_row_goes_on_after_a_resume_from_the_checkpoint()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, steps: 5);
        spec = spec with { Training = spec.Training with { MaxNonfiniteSteps = 3, CheckpointInterval = 5 } };
        var dir = Path.Combine(tmp.Path, "run");
        // Steps 4 and 5 skipped: the run ends at step 5 (2 < 3) and its checkpoint says 2 in a row.
        Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = dir, InjectNonFinite = NonFiniteInjection.Parse("loss:4,5", "test") }, new Recorder(), CancellationToken.None);
        Assert.Equal(2, TrainingCheckpoint.ReadState(Checkpoint(dir, 5), "step 5").NonFiniteStreak);

        // Resumed to 8 steps: step 6 is the third in a row, and fails the run as it would have without the break.
        var longer = spec with { Training = spec.Training with { MaxSteps = 8 } };
        var e = Assert.Throws<TrainingDivergedException>(() => Trainer.Run(longer, tmp.Path,
            new TrainOptions { OutputDir = dir, Resume = true, InjectNonFinite = NonFiniteInjection.Parse("loss:6", "test") }, new Recorder(), CancellationToken.None));
        Assert.StartsWith("3 consecutive steps (4-6) were skipped", e.Message);

        // A finite step resets it: resumed from step 5 with step 6 fine, the checkpoint after it says 0.
        var seen = new Recorder();
        Trainer.Run(longer with { Training = longer.Training with { CheckpointInterval = 1 } }, tmp.Path, new TrainOptions { OutputDir = dir, Resume = true }, seen, CancellationToken.None);
        Assert.Equal(0, TrainingCheckpoint.ReadState(Checkpoint(dir, 6), "step 6").NonFiniteStreak);
    }

    [Fact]
    public void A_checkpoint_of_non_finite_parameters_is_refused_and_no_such_file_is_written()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        var dir = Path.Combine(tmp.Path, "run");
        // After step 2 the parameters are NaN (corruption no skip can prevent): the checkpoint after it is refused.
        var e = Assert.Throws<TrainingDivergedException>(() =>
            Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = dir, InjectNonFinite = NonFiniteInjection.Parse("parameters:2", "test") }, new Recorder(), CancellationToken.None));
        Assert.StartsWith("refusing to write a checkpoint at step 2: ", e.Message);
        Assert.Contains("parameter value(s) are NaN or infinite (embedding.weight (", e.Message);
        Assert.EndsWith("lower optimizer.lr (now 0.01) or lower training.clip_norm (now 1)", e.Message);
        Assert.Equal(["ckpt-000000001.dtck"], Directory.EnumerateFiles(Path.Combine(dir, "checkpoints"), "*.dtck").Select(Path.GetFileName));
    }

    [Fact]
    public void Dtrain_train_diverging_for_real_exits_1_after_max_nonfinite_steps_with_the_message()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        // No fault injected: step 1's gradients are finite, but at this rate its update sends the parameters to ~1e37 and
        // from step 2 on the forward pass overflows.
        spec = spec with { Optimizer = spec.Optimizer with { Lr = 1e37 }, Schedule = new ScheduleSpec(), Training = spec.Training with { MaxNonfiniteSteps = 3, CheckpointInterval = 0, ClipNorm = 0 } };
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        var result = CliRunner.Run(tmp.Path, "train", path, "--plain", "--output", Path.Combine(tmp.Path, "run"));
        Assert.True(result.ExitCode == 1, result.ToString());
        // Step 1 applied; steps 2-4 have a non-finite loss and are skipped; the third fails the run.
        Assert.Matches(@"step 2 skipped: non-finite loss \((NaN|Infinity)\); no parameter or optimizer state changed \(1 in a row; the run fails at 3, training.max_nonfinite_steps\)", result.Stdout);
        Assert.Matches(@"step 2/8 epoch 1 loss (NaN|Infinity) \(skipped\)", result.Stdout);
        Assert.Matches(@"error: 3 consecutive steps \(2-4\) were skipped for a non-finite loss or gradient \(step 4: non-finite loss \((NaN|Infinity)\)\): training is diverging; " +
            @"lower optimizer\.lr \(now 1E\+37\) or enable training\.clip_norm \(now 0 = off\), e\.g\. 1\.0\n", result.Stderr);
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "run", "checkpoints")) && Directory.EnumerateFiles(Path.Combine(tmp.Path, "run", "checkpoints"), "*.dtck").Any());
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1_000_001)]
    public void Max_nonfinite_steps_out_of_range_is_a_spec_error_naming_the_field(int value)
    {
        var spec = new JobSpec { Training = new TrainingSpec { MaxNonfiniteSteps = value } };
        var error = Assert.Single(JobSpecValidator.Validate(spec), e => e.Path == "$.training.max_nonfinite_steps");
        Assert.Contains($"{value} must be in [1, 1000000]", error.ToString());
    }

    [Fact]
    public void Max_nonfinite_steps_defaults_to_5_and_reads_from_json()
    {
        Assert.Equal(5, new TrainingSpec().MaxNonfiniteSteps);
        var spec = JobSpecSerializer.Parse("""{"data": {"train": "t.txt"}, "training": {"max_nonfinite_steps": 2}}""", "job.json");
        Assert.Equal(2, spec.Training.MaxNonfiniteSteps);
    }
}
