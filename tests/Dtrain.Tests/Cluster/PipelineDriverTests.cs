using Dtrain.Inference;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// The pipeline step driver without gRPC: the same driver the coordinator runs, on in-memory workers (real worker
/// runtimes behind in-process handles, stage links and rings in memory). The gathered model equals one process training
/// the whole model, every step is reported once, and a stage's worker that dies is the one the failure names. The gRPC
/// counterpart: PipelineJobTests.
/// </summary>
public class PipelineDriverTests
{
    /// <summary>SGD with momentum and a small clip norm (a wrong average or a per-stage clip would show), as PipelineJobTests.</summary>
    static JobSpec Spec(TempDir tmp, string task)
    {
        if (task == TaskKinds.LanguageModel)
        {
            tmp.Write("t.txt", TestJobs.Text(120));
            var lm = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: 10);
            return lm with
            {
                Model = lm.Model with { Layers = 4, EmbeddingDim = 8, HiddenSize = 16 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
                Training = lm.Training with { BatchSize = 8, SeqLen = 12, ClipNorm = 0.05, EvalInterval = 5, CheckpointInterval = 0 },
            };
        }
        tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(110));
        var c = TestJobs.Classifier(Path.Combine(tmp.Path, "d.jsonl"), steps: 10);
        return c with
        {
            Model = c.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 12, Bidirectional = true },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = c.Training with { BatchSize = 8, ClipNorm = 0.05, EvalInterval = 5, CheckpointInterval = 0 },
        };
    }

    static JobRecord Job(TempDir tmp, JobSpec spec, int workers)
    {
        var dir = Path.Combine(tmp.Path, "job");
        var job = new JobRecord("job-0001", spec with { Output = dir }, dir, workers, DateTimeOffset.UtcNow);
        job.Transition(JobTrigger.Start, "preparing data"); // as the runner does before the driver
        return job;
    }

    public static TheoryData<string, int, int, int, string> Layouts => new()
    {
        { TaskKinds.LanguageModel, 2, 1, 2, "1f1b" },
        { TaskKinds.LanguageModel, 3, 1, 4, "gpipe" },
        { TaskKinds.LanguageModel, 2, 2, 2, "1f1b" },
        { TaskKinds.Classification, 2, 2, 2, "gpipe" },
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public async Task Pipeline_driver_on_in_memory_workers_trains_the_model_one_process_trains(string task, int stages, int replicas, int micro, string schedule)
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, task);
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);

        var pipelined = spec with { Parallelism = new ParallelismSpec { Data = replicas, Pipeline = new PipelineSpec { Stages = stages, Microbatches = micro, Schedule = schedule } } };
        var job = Job(tmp, pipelined, stages * replicas);
        await using var workers = new InMemoryJobWorkers(stages * replicas);
        var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);
        await new PipelineDriver(new CoordinatorOptions()).RunAsync(job, prepared, workers, CancellationToken.None);

        var info = job.Progress;
        Assert.Equal(10, info.Step);
        Assert.Equal(10, info.TotalSteps);
        var steps = new List<long>();
        var evals = new List<long>();
        var history = job.Watch();
        while (history.TryRead(out var notice))
        {
            if (notice is JobNotice.Step s) steps.Add(s.Report.Step);
            if (notice is JobNotice.Eval e) evals.Add(e.AtStep);
        }
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (long)i), steps);
        Assert.Equal([5L, 10L], evals);
        using var gathered = TrainedModel.Load(info.Checkpoint);
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, gathered.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{replicas} x {stages} stages, {micro} micro-batches, {schedule}: max |dp| / max |p| = {relative:E2}");
        // The coordinator evaluated the gathered model as one process evaluates its own.
        Assert.Equal(single.Final!.Loss, info.LastEval!.Loss, 4);
        if (task == TaskKinds.Classification) Assert.Equal(single.Final.Accuracy!.Value, info.LastEval.Accuracy!.Value, 4);
    }

    [Fact]
    public async Task A_stage_whose_worker_dies_mid_step_is_the_one_the_failure_names()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, TaskKinds.LanguageModel) with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 3, Microbatches = 2 } } };
        var job = Job(tmp, spec, 3);
        await using var workers = new InMemoryJobWorkers(3);
        // The middle stage's worker dies as step 3 (0-based) begins: the stages before and after it lose their links to it.
        ((InProcessWorkerHandle)workers.Handles[1]).BeforeStep = step =>
        {
            if (step.Step != 3) return true;
            workers.StopAsync(1).GetAwaiter().GetResult();
            return false;
        };
        var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);

        var e = await Assert.ThrowsAsync<JobFailure>(() => new PipelineDriver(new CoordinatorOptions { FailureBlameGraceSeconds = 5 }).RunAsync(job, prepared, workers, CancellationToken.None));

        Assert.Equal("mem1", e.Unreachable?.Id);
        Assert.StartsWith("worker mem1 (", e.Message);
        Assert.Contains("at step 3", e.Message);
        Assert.Equal(3, job.Progress.Step);
    }

    sealed class NullObserver : ITrainingObserver;
}
