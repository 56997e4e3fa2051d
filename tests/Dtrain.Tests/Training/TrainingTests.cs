using Dtrain.Checkpoints;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Tests.Training;

[Collection(TorchRngCollection.Name)]
public class TrainingTests
{
    sealed class Recorder : ITrainingObserver
    {
        public List<StepReport> Steps { get; } = [];
        public List<string> Messages { get; } = [];
        public void OnStep(StepReport report) => Steps.Add(report);
        public void OnMessage(string message) => Messages.Add(message);
    }

    [Theory]
    [InlineData(CellKinds.Lstm)]
    [InlineData(CellKinds.Gru)]
    public void Language_model_loss_goes_down(string cell)
    {
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text());
        var rec = new Recorder();
        var summary = Trainer.Run(TestJobs.CharLm(text, cell, steps: 60), tmp.Path, new TrainOptions { OutputDir = tmp.Path }, rec, CancellationToken.None);
        Assert.Equal(60, summary.Steps);
        var first = rec.Steps.Take(5).Average(s => s.Loss);
        var last = rec.Steps.TakeLast(5).Average(s => s.Loss);
        Assert.True(last < first * 0.6, $"training loss {first:F3} -> {last:F3}");
        // Uniform guessing over the vocabulary costs ln(V) nats; the model must do much better on held-out text.
        Assert.True(summary.Final!.Loss < Math.Log(18) * 0.7, $"validation loss {summary.Final.Loss:F3}");
    }

    [Fact]
    public void Classifier_learns_a_keyword_task()
    {
        using var tmp = new TempDir();
        var data = tmp.Write("d.jsonl", TestJobs.ClassificationJsonl());
        var summary = Trainer.Run(TestJobs.Classifier(data, steps: 40), tmp.Path, new TrainOptions { OutputDir = tmp.Path }, new Recorder(), CancellationToken.None);
        Assert.True(summary.Final!.Accuracy >= 0.95, $"accuracy {summary.Final.Accuracy}");
        Assert.True(summary.Final.MacroF1 >= 0.95);
    }

    [Fact]
    public void Summed_gradients_of_row_slices_equal_the_full_batch_gradient()
    {
        var spec = TestJobs.CharLm("unused") with { Training = TestJobs.CharLm("unused").Training with { ClipNorm = 0 } };
        var tokens = TestJobs.Text(10).Select(c => 2 + c % 20).ToArray();
        var source = new LanguageModelBatches(tokens, 6, 12, LmSamplingKinds.Random, seed: 2);
        var pos = new StepPosition(0, 0);
        using var whole = new TrainingEngine(spec, 24, 0, CPU);
        using var parts = new TrainingEngine(spec, 24, 0, CPU);
        using (var b = source.Get(pos, 0, 6)!) whole.ComputeGradients(b, carryState: false);
        var sum = parts.Parameters.Select(p => zeros_like(p)).ToList();
        foreach (var (start, count) in new[] { (0, 1), (1, 3), (4, 2) })
        {
            using var b = source.Get(pos, start, count)!;
            parts.ComputeGradients(b, carryState: false);
            for (var i = 0; i < sum.Count; i++) sum[i].add_(parts.Parameters[i].grad!);
        }
        for (var i = 0; i < sum.Count; i++)
            Assert.True(sum[i].allclose(whole.Parameters[i].grad!, rtol: 1e-4, atol: 1e-6), $"parameter {i} differs");
    }

    [Fact]
    public void Checkpoint_round_trip_restores_exactly_the_saved_weights_and_optimizer_state()
    {
        // Train an engine a few steps, save it, load the file back: the loaded model must hold the very
        // parameters (and the optimizer its very state) the engine had when it was saved — not merely agree with
        // another load of the same file.
        using var tmp = new TempDir();
        var spec = TestJobs.CharLm("unused", steps: 3);
        var tokenizer = Dtrain.Data.TokenizerFactory.Fit(spec.Tokenizer, [TestJobs.Text(2)]);
        var tokens = tokenizer.Encode(TestJobs.Text(10));
        var source = new LanguageModelBatches(tokens, 4, 16, LmSamplingKinds.Stream, seed: 1);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        for (var k = 0; k < 3; k++)
        {
            using var batch = source.Get(new StepPosition(0, k), 0, 4)!;
            var stats = engine.ComputeGradients(batch, carryState: true);
            engine.ApplyGradients(stats.Count, 0.01);
        }
        var saved = engine.Parameters.Select(p => p.detach().clone()).ToList();
        var store = new CheckpointStore(Path.Combine(tmp.Path, "checkpoints"), 3);
        var path = store.Save(TrainingCheckpoint.Capture(spec, tokenizer, Dtrain.Data.LabelSet.Empty, new TrainingState { Step = 3 }, engine));

        using var loaded = Dtrain.Inference.TrainedModel.Load(path);
        Assert.Equal(3, loaded.State.Step);
        Assert.Equal(tokenizer.ToState().Tokens, loaded.Tokenizer.ToState().Tokens);
        Assert.Equal(saved.Count, loaded.Engine.Parameters.Count);
        for (var i = 0; i < saved.Count; i++)
            Assert.True(saved[i].eq(loaded.Engine.Parameters[i]).all().item<bool>(), $"parameter {i} differs from the one that was saved");
        // ... and a model that was never trained is told apart (the comparison can fail).
        using var fresh = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        Assert.Contains(fresh.Parameters.Zip(saved), p => !p.First.eq(p.Second).all().item<bool>());

        // The optimizer state and the carried hidden state round-trip too: restored into a fresh engine, they equal the originals.
        using var resumed = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        TrainingCheckpoint.Restore(CheckpointStore.ReadFile(path), path, resumed, withOptimizer: true);
        Assert.Equal(OptimizerStateBytes.Save((TorchSharp.Modules.OptimizerHelper)engine.Optimizer), OptimizerStateBytes.Save((TorchSharp.Modules.OptimizerHelper)resumed.Optimizer));
        Assert.True(engine.CarriedState!.H.eq(resumed.CarriedState!.H).all().item<bool>());
        Assert.True(engine.CarriedState.C!.eq(resumed.CarriedState.C!).all().item<bool>());
    }

    [Theory]
    [InlineData(LmSamplingKinds.Stream)]
    [InlineData(LmSamplingKinds.Random)]
    public void Resumed_run_ends_with_the_same_parameters_as_an_uninterrupted_one(string sampling)
    {
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text());
        var baseSpec = TestJobs.CharLm(text, steps: 12);
        var spec = baseSpec with { Model = baseSpec.Model with { Dropout = 0.2 }, Training = baseSpec.Training with { LmSampling = sampling } };
        var straight = Path.Combine(tmp.Path, "straight");
        var split = Path.Combine(tmp.Path, "split");
        Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = straight }, new Recorder(), CancellationToken.None);
        Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 5 } }, tmp.Path, new TrainOptions { OutputDir = split }, new Recorder(), CancellationToken.None);
        var rec = new Recorder();
        Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = split, Resume = true }, rec, CancellationToken.None);
        Assert.Contains(rec.Messages, m => m.Contains("resumed") && m.Contains("step 5"));
        Assert.Equal(7, rec.Steps.Count);
        using var a = Dtrain.Inference.TrainedModel.Load(straight);
        using var b = Dtrain.Inference.TrainedModel.Load(split);
        Assert.Equal(12, b.State.Step);
        foreach (var (p, q) in a.Engine.Parameters.Zip(b.Engine.Parameters))
            Assert.True(p.allclose(q, rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void Resume_skips_a_corrupt_newest_checkpoint_with_a_warning()
    {
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm(text, steps: 6) with { Training = TestJobs.CharLm(text).Training with { MaxSteps = 6, CheckpointInterval = 3, KeepCheckpoints = 5 } };
        Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = tmp.Path }, new Recorder(), CancellationToken.None);
        var newest = new CheckpointStore(Path.Combine(tmp.Path, "checkpoints"), 5).List()[^1];
        Assert.Equal(6, newest.Step);
        var bytes = File.ReadAllBytes(newest.Path);
        bytes[bytes.Length / 2] ^= 0xFF;
        File.WriteAllBytes(newest.Path, bytes);
        var rec = new Recorder();
        Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 8 } }, tmp.Path, new TrainOptions { OutputDir = tmp.Path, Resume = true }, rec, CancellationToken.None);
        Assert.Contains(rec.Messages, m => m.Contains("corrupt") && m.Contains(Path.GetFileName(newest.Path)));
        Assert.Contains(rec.Messages, m => m.Contains("resumed") && m.Contains("step 3"));
        Assert.Equal(5, rec.Steps.Count);
    }

    [Fact]
    public void Cancellation_stops_cleanly_and_saves_a_checkpoint()
    {
        using var tmp = new TempDir();
        var text = tmp.Write("t.txt", TestJobs.Text());
        using var cts = new CancellationTokenSource();
        var rec = new CancellingRecorder(cts, afterSteps: 3);
        var summary = Trainer.Run(TestJobs.CharLm(text, steps: 1000), tmp.Path, new TrainOptions { OutputDir = tmp.Path }, rec, cts.Token);
        Assert.Equal("interrupted", summary.StopReason);
        Assert.Equal(3, summary.Steps);
        Assert.Equal(3, Dtrain.Inference.TrainedModel.Load(summary.Checkpoint!).State.Step);
    }

    sealed class CancellingRecorder(CancellationTokenSource cts, int afterSteps) : ITrainingObserver
    {
        public void OnStep(StepReport report)
        {
            if (report.Step == afterSteps) cts.Cancel();
        }
    }
}
