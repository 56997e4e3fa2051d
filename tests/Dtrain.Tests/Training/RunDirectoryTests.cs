using Dtrain.Checkpoints;
using Dtrain.Inference;
using Dtrain.Specs;
using Dtrain.Tests.Checkpoints;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Training;

/// <summary>
/// A run directory holds one run's files: a fresh run moves an earlier run's aside (nothing deleted), and a run
/// directory stands for the model written last — its checkpoints/ or the model.dtck of `cluster run`.
/// </summary>
[Collection(TorchRngCollection.Name)]
public class RunDirectoryTests
{
    sealed class Recorder : ITrainingObserver
    {
        public List<string> Messages { get; } = [];
        public void OnMessage(string message) => Messages.Add(message);
    }

    static string[] Checkpoints(string dir) =>
        [.. Directory.EnumerateFiles(dir, "*.dtck").Select(Path.GetFileName).Order(StringComparer.Ordinal)!];

    [Fact]
    public void A_fresh_run_moves_an_earlier_runs_checkpoints_aside_and_a_resume_does_not()
    {
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text());
        var data = tmp.Write("d.jsonl", TestJobs.ClassificationJsonl());
        var run = Path.Combine(tmp.Path, "reuse");
        // keep_checkpoints 1: without the move, the new run's first save would prune the earlier run's checkpoint.
        var lm = TestJobs.CharLm(text, steps: 20);
        lm = lm with { Training = lm.Training with { CheckpointInterval = 10, KeepCheckpoints = 1 } };
        Trainer.Run(lm, tmp.Path, new TrainOptions { OutputDir = run }, new Recorder(), CancellationToken.None);
        File.WriteAllText(Path.Combine(run, "notes.txt"), "mine");

        var clf = TestJobs.Classifier(data, steps: 5);
        clf = clf with { Training = clf.Training with { KeepCheckpoints = 1 } };
        var rec = new Recorder();
        Trainer.Run(clf, tmp.Path, new TrainOptions { OutputDir = run }, rec, CancellationToken.None);

        var earlier = Assert.Single(Directory.GetDirectories(run, RunDirectory.EarlierPrefix + "*"));
        Assert.Matches(@"earlier-\d{8}T\d{6}Z$", earlier);
        Assert.Equal(["ckpt-000000020.dtck"], Checkpoints(Path.Combine(earlier, "checkpoints")));
        Assert.Equal(["ckpt-000000005.dtck"], Checkpoints(Path.Combine(run, "checkpoints")));
        Assert.Equal("mine", File.ReadAllText(Path.Combine(run, "notes.txt")));
        var line = Assert.Single(rec.Messages, m => m.Contains("earlier run"));
        Assert.Contains(run, line);
        Assert.Contains(earlier, line);
        using (var model = TrainedModel.Load(run))
        {
            Assert.Equal(TaskKinds.Classification, model.Spec.Task);
            Assert.Equal(5, model.State.Step);
        }
        using (var old = TrainedModel.Load(earlier))
            Assert.Equal(TaskKinds.LanguageModel, old.Spec.Task);

        // --resume continues this run in place: nothing is moved.
        var more = clf with { Training = clf.Training with { MaxSteps = 8 } };
        var resumed = new Recorder();
        Trainer.Run(more, tmp.Path, new TrainOptions { OutputDir = run, Resume = true }, resumed, CancellationToken.None);
        Assert.Single(Directory.GetDirectories(run, RunDirectory.EarlierPrefix + "*"));
        Assert.DoesNotContain(resumed.Messages, m => m.Contains("earlier run"));
        Assert.Equal(["ckpt-000000008.dtck"], Checkpoints(Path.Combine(run, "checkpoints")));
    }

    [Fact]
    public void A_resume_from_a_newer_model_dtck_moves_the_older_checkpoints_aside_before_saving()
    {
        // runs/NAME after a local run (steps 10, 20) and then `cluster run --output runs/NAME/model.dtck` (step 5).
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm(text, steps: 20);
        spec = spec with { Training = spec.Training with { CheckpointInterval = 10, KeepCheckpoints = 2 } };
        var run = Path.Combine(tmp.Path, "run");
        Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = run }, new Recorder(), CancellationToken.None);
        foreach (var f in Directory.GetFiles(Path.Combine(run, "checkpoints"))) File.SetLastWriteTimeUtc(f, DateTime.UtcNow.AddHours(-1));
        var other = Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 5 } }, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "cluster") }, new Recorder(), CancellationToken.None);
        File.Copy(other.Checkpoint!, Path.Combine(run, "model.dtck"));

        var rec = new Recorder();
        Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 8, CheckpointInterval = 1 } }, tmp.Path, new TrainOptions { OutputDir = run, Resume = true }, rec, CancellationToken.None);
        Assert.Contains(rec.Messages, m => m.StartsWith($"resumed from {Path.Combine(run, "model.dtck")} at step 5", StringComparison.Ordinal));
        var earlier = Assert.Single(Directory.GetDirectories(run, RunDirectory.EarlierPrefix + "*"));
        Assert.Equal(["ckpt-000000010.dtck", "ckpt-000000020.dtck"], Checkpoints(Path.Combine(earlier, "checkpoints")));
        Assert.Equal(["ckpt-000000007.dtck", "ckpt-000000008.dtck"], Checkpoints(Path.Combine(run, "checkpoints")));
        Assert.True(File.Exists(Path.Combine(run, "model.dtck")));
        Assert.Equal(8, RunDirectory.LoadLatest(run)!.Data.Step);
    }

    [Fact]
    public void A_run_directory_stands_for_the_model_written_last_including_model_dtck()
    {
        using var dir = new TempDirectory();
        // Only the model.dtck of `cluster run`.
        File.WriteAllBytes(dir.File("model.dtck"), Samples.Serialize(Samples.Checkpoint(7)));
        Assert.Equal(dir.File("model.dtck"), RunDirectory.LoadLatest(dir.Path)!.Path);

        // Older local checkpoints (a higher step) next to a newer model.dtck: the model.dtck.
        var store = new CheckpointStore(Path.Combine(dir.Path, "checkpoints"), 3);
        var stale = store.Save(Samples.Checkpoint(20));
        File.SetLastWriteTimeUtc(stale, DateTime.UtcNow.AddHours(-1));
        var latest = RunDirectory.LoadLatest(dir.Path)!;
        Assert.Equal(dir.File("model.dtck"), latest.Path);
        Assert.Equal(7, latest.Data.Step);

        // A checkpoint written after the model.dtck wins.
        File.SetLastWriteTimeUtc(dir.File("model.dtck"), DateTime.UtcNow.AddHours(-2));
        Assert.Equal(stale, RunDirectory.LoadLatest(dir.Path)!.Path);

        // A corrupt model.dtck is passed over with a reason, never loaded.
        File.WriteAllBytes(dir.File("model.dtck"), [1, 2, 3]);
        File.SetLastWriteTimeUtc(dir.File("model.dtck"), DateTime.UtcNow);
        latest = RunDirectory.LoadLatest(dir.Path)!;
        Assert.Equal(stale, latest.Path);
        Assert.Contains(latest.Skipped, s => s.Path == dir.File("model.dtck"));
    }

    [Fact]
    public void Moving_an_earlier_run_aside_moves_checkpoints_and_model_dtck_and_never_overwrites()
    {
        using var dir = new TempDirectory();
        Assert.Null(RunDirectory.MoveEarlierRunAside(dir.Path, DateTime.UtcNow));
        var at = new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc);
        for (var round = 1; round <= 2; round++)
        {
            new CheckpointStore(Path.Combine(dir.Path, "checkpoints"), 3).Save(Samples.Checkpoint(round));
            File.WriteAllBytes(dir.File("model.dtck"), Samples.Serialize(Samples.Checkpoint(100 + round)));
            var moved = RunDirectory.MoveEarlierRunAside(dir.Path, at)!;
            Assert.Equal(dir.File(round == 1 ? "earlier-20260102T030405Z" : "earlier-20260102T030405Z-2"), moved);
            Assert.True(File.Exists(Path.Combine(moved, "checkpoints", CheckpointStore.FileName(round))));
            Assert.Equal(100 + round, CheckpointStore.ReadFile(Path.Combine(moved, "model.dtck")).Step);
            Assert.False(File.Exists(dir.File("model.dtck")));
            Assert.False(Directory.Exists(dir.File("checkpoints")));
        }
        // Nothing left to load: the message names where it looked and the runs moved aside.
        Assert.Null(RunDirectory.LoadLatest(dir.Path));
        Assert.Contains("earlier-20260102T030405Z, ", RunDirectory.NothingIn(dir.Path));
    }
}
