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
        using var gathered = TrainedModel.Load(info.Checkpoint);
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, gathered.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{replicas} x {stages} stages, {micro} micro-batches, {schedule}: max |dp| / max |p| = {relative:E2}");
        // The coordinator evaluated the gathered model as one process evaluates its own.
        Assert.Equal(single.Final!.Loss, info.LastEval.Loss, 4);
        if (task == TaskKinds.Classification) Assert.Equal(single.Final.Accuracy!.Value, info.LastEval.Accuracy, 4);
    }

    sealed class NullObserver : ITrainingObserver;
}
