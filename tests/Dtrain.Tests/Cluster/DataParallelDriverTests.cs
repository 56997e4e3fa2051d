using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Cluster;

/// <summary>The data-parallel step driver without gRPC: the same driver the coordinator runs, on in-memory workers.</summary>
public class DataParallelDriverTests
{
    [Fact]
    public async Task Driver_on_in_memory_workers_matches_single_process_training_and_reports_every_step()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: 12);
        spec = spec with { Training = spec.Training with { BatchSize = 5, SeqLen = 12, EvalInterval = 6, CheckpointInterval = 0 } };
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);

        var dir = Path.Combine(tmp.Path, "job");
        var job = new JobRecord("job-0001", spec with { Output = dir }, dir, 3, DateTimeOffset.UtcNow);
        job.Transition(JobTrigger.Start, "preparing data"); // as the runner does before the driver
        await using var workers = new InMemoryJobWorkers(3);
        var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);
        await new DataParallelDriver(new CoordinatorOptions()).RunAsync(job, prepared, workers, CancellationToken.None);

        var info = job.Progress;
        Assert.Equal(12, info.Step);
        Assert.Equal(12, info.TotalSteps);
        using var distributed = TrainedModel.Load(info.Checkpoint);
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, distributed.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"max |dp| / max |p| = {relative:E2}");
        // The job's event history, as `watch` replays it.
        var steps = new List<StepEvent>();
        var evals = new List<EvalEvent>();
        var history = job.Watch();
        while (history.TryRead(out var notice))
        {
            var e = job.ToProto(notice);
            if (e.Step is { } s) steps.Add(s);
            if (e.Eval is { } v) evals.Add(v);
        }
        Assert.Equal(Enumerable.Range(1, 12).Select(i => (long)i), steps.Select(s => s.Step));
        Assert.All(steps, s => Assert.Equal(3, s.Workers));
        Assert.Equal([6L, 12L], evals.Select(e => e.Step));
    }

    sealed class NullObserver : ITrainingObserver;
}
