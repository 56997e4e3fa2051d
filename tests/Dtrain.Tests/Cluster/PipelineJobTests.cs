using Dtrain.Distributed.Pipeline;
using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Pipelined jobs end to end on a real coordinator and real workers (gRPC on loopback): stages on workers, activations
/// and gradients worker to worker, D × K hybrids; the gathered model equals one process training the whole model.
/// </summary>
public class PipelineJobTests
{
    static JobSpec Spec(TempDir tmp)
    {
        tmp.Write("t.txt", TestJobs.Text(120));
        var spec = TestJobs.CharLm("t.txt", steps: 10);
        return spec with
        {
            Model = spec.Model with { Layers = 4, EmbeddingDim = 8, HiddenSize = 16 },
            // SGD with a small clip norm: a wrong average or a per-stage (not global) clip would show.
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = spec.Training with { BatchSize = 8, SeqLen = 12, ClipNorm = 0.05, EvalInterval = 5, CheckpointInterval = 0 },
        };
    }

    static JobSpec Classifier(TempDir tmp)
    {
        tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(110));
        var spec = TestJobs.Classifier("d.jsonl", steps: 10);
        return spec with
        {
            Model = spec.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 12, Bidirectional = true },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = spec.Training with { BatchSize = 8, ClipNorm = 0.05, EvalInterval = 5, CheckpointInterval = 0 },
        };
    }

    public static TheoryData<string, int, int, int, string> Layouts => new()
    {
        { TaskKinds.LanguageModel, 2, 1, 2, "1f1b" },
        { TaskKinds.LanguageModel, 4, 1, 4, "gpipe" },
        { TaskKinds.LanguageModel, 2, 2, 2, "1f1b" },
        { TaskKinds.Classification, 2, 2, 2, "gpipe" },
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public async Task Pipelined_job_trains_the_model_one_process_trains(string task, int stages, int replicas, int micro, string schedule)
    {
        using var tmp = new TempDir();
        var spec = task == TaskKinds.LanguageModel ? Spec(tmp) : Classifier(tmp);
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);

        var pipelined = spec with { Parallelism = new ParallelismSpec { Data = replicas, Pipeline = new PipelineSpec { Stages = stages, Microbatches = micro, Schedule = schedule } } };
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(pipelined));
        await using var cluster = await InProcessCluster.StartAsync(stages * replicas);
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), stages * replicas)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(10, info.Step);
        Assert.Equal(stages * replicas, info.WorkerIds.Count);
        using var gathered = TrainedModel.Load(cluster.CheckpointFile(info));
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, gathered.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{replicas} x {stages} stages, {micro} micro-batches, {schedule}: max |dp| / max |p| = {relative:E2}");
        // The coordinator evaluated the gathered model as one process evaluates its own.
        Assert.Equal(single.Final!.Loss, info.LastEval.Loss, 4);
        if (task == TaskKinds.Classification) Assert.Equal(single.Final.Accuracy!.Value, info.LastEval.Accuracy, 4);
    }

    [Fact]
    public async Task A_gathered_checkpoint_carries_the_optimizer_state_and_resumes_in_one_process_as_if_never_split()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(120));
        var spec = TestJobs.CharLm("t.txt", steps: 12);
        // Adam (its moments must survive the gather), random windows (no carried state), no dropout.
        spec = spec with
        {
            Model = spec.Model with { Layers = 3, EmbeddingDim = 8, HiddenSize = 16 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
            Training = spec.Training with { BatchSize = 8, SeqLen = 12, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 0 },
        };
        var uninterrupted = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(uninterrupted.Checkpoint!);

        var first = spec with { Training = spec.Training with { MaxSteps = 7 }, Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 3, Microbatches = 2 } } };
        await using var cluster = await InProcessCluster.StartAsync(3);
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("first.json", JobSpecSerializer.Serialize(first))), 3)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");

        // Resume the rest without a pipeline (K = 1) from the gathered checkpoint.
        var resumed = Path.Combine(tmp.Path, "resumed");
        Directory.CreateDirectory(Path.Combine(resumed, "checkpoints"));
        File.Copy(cluster.CheckpointFile(info), Path.Combine(resumed, "checkpoints", info.Checkpoint));
        var rest = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = resumed, Resume = true }, new NullObserver(), CancellationToken.None);
        Assert.Equal(12, rest.Steps);
        using var continued = TrainedModel.Load(rest.Checkpoint!);
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, continued.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"7 pipelined + 5 resumed steps vs 12 in one process: max |dp| / max |p| = {relative:E2}");
    }

    sealed class NullObserver : ITrainingObserver;
}

/// <summary>A worker's memory budget: a model that does not fit is refused with the numbers, and trains once split.</summary>
public class MemoryBudgetTests
{
    [Fact]
    public async Task A_model_over_the_worker_budget_is_refused_unsplit_and_trains_split_into_stages()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(60));
        var spec = TestJobs.CharLm("t.txt", steps: 3) with { Model = new ModelSpec { Layers = 4, EmbeddingDim = 16, HiddenSize = 192 } };
        spec = spec with { Training = spec.Training with { BatchSize = 8, SeqLen = 12 } };
        var split = spec with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } } };
        var vocab = PreparedData.Load(spec, tmp.Path).Tokenizer.VocabSize;
        var layout = ModelLayout.Of(spec.Model, vocab, vocab);
        var whole = PipelinePlan.Estimate(spec, new StagePlan(0, 0, 4, layout.Total, true, true), 8, 1, vocab).Total;
        var stage = PipelinePlan.Create(split, 2, vocab, vocab).Memory.Max(m => m.Total);
        Assert.True(stage < whole);
        var budgetMb = (stage + whole) / 2 / 1e6;

        await using var cluster = await InProcessCluster.StartAsync(0);
        for (var i = 0; i < 2; i++) await cluster.AddWorkerAsync(new Dtrain.Worker.WorkerOptions { MemoryBudgetMb = budgetMb });
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));

        // The workers report their budget: the unsplit model is refused at submit, with the estimate and the fields.
        var refused = Assert.Throws<Grpc.Core.RpcException>(() => cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("whole.json", JobSpecSerializer.Serialize(spec))), 1)));
        Assert.Equal(Grpc.Core.StatusCode.InvalidArgument, refused.StatusCode);
        Assert.Contains("training needs about", refused.Status.Detail);
        Assert.Contains("model.hidden_size 192", refused.Status.Detail);
        Assert.Contains("the memory of the largest worker", refused.Status.Detail);

        var staged = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("split.json", JobSpecSerializer.Serialize(split))), 2)).JobId;
        var trained = await cluster.WaitAsync(staged, TimeSpan.FromMinutes(1));
        Assert.True(trained.State == JobState.Succeeded, $"{trained.State}: {trained.Message}");
    }
}
