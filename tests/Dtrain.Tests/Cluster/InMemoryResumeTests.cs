using Dtrain.Inference;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Resuming and coordinator restarts without gRPC or processes (<see cref="InMemoryCoordinator"/>: the real job queue,
/// runner, store and drivers; real worker runtimes behind in-process handles): a resumed job's checkpoint is loaded into
/// its workers (<see cref="ResumeLoader"/>) and training continues with the losses of an uninterrupted run; a coordinator
/// stopped mid-job and started again on its data directory, with other workers, re-drives the job from its newest
/// checkpoint to the model and losses of an uninterrupted run. The gRPC counterparts: ClusterResumeTests, CoordinatorRestartTests.
/// </summary>
public class InMemoryResumeTests
{
    const int Total = 12, Break = 7;

    /// <summary>Adam (its moments must travel), random windows (no carried state), no dropout, 12-row batches (even over 2 or 3 workers).</summary>
    static (string Data, JobSpec Spec) Job(TempDir tmp, int steps = Total, int checkpointInterval = 0)
    {
        var data = tmp.Write("t.txt", TestJobs.Text(120));
        var spec = TestJobs.CharLm("t.txt", steps: steps);
        spec = spec with
        {
            Model = spec.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 16 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
            Training = spec.Training with { BatchSize = 12, SeqLen = 12, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = checkpointInterval },
        };
        return (data, spec);
    }

    /// <summary>The loss of every step the job reported, by step (a step reported again after a restart: its last report).</summary>
    static SortedDictionary<long, double> StepLosses(JobRecord job)
    {
        var losses = new SortedDictionary<long, double>();
        var history = job.Watch();
        while (history.TryRead(out var notice))
            if (notice is JobNotice.Step s) losses[s.Report.Step] = s.Report.Loss;
        return losses;
    }

    static void AssertSameLosses(SortedDictionary<long, double> expected, SortedDictionary<long, double> actual, long from, long to)
    {
        Assert.Equal(Enumerable.Range((int)from + 1, (int)(to - from)).Select(i => (long)i), actual.Keys.Where(k => k > from));
        foreach (var step in actual.Keys.Where(k => k > from))
            Assert.True(Math.Abs(expected[step] - actual[step]) <= 1e-6, $"step {step}: loss {actual[step]:R}, uninterrupted {expected[step]:R}");
    }

    static async Task<JobRecord> Finished(JobRecord job)
    {
        await InMemoryCoordinator.WaitAsync(job, TimeSpan.FromMinutes(2));
        Assert.True(job.Status == JobStatus.Succeeded, $"job {job.Id}: {job.Status}: {job.Progress.Message}");
        return job;
    }

    sealed class NullObserver : ITrainingObserver;

    [Theory]
    [InlineData(2, 2)]
    [InlineData(1, 2)]
    [InlineData(2, 3)]
    public async Task A_job_resumed_from_another_jobs_checkpoint_continues_with_the_losses_and_the_model_of_an_uninterrupted_run(int before, int after)
    {
        using var tmp = new TempDir();
        var (data, spec) = Job(tmp);
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);
        await using var coordinator = await InMemoryCoordinator.StartAsync(Path.Combine(tmp.Path, "coordinator"), "a", "b", "c");

        var whole = await Finished(coordinator.Submit(spec, data, after));
        var first = await Finished(coordinator.Submit(spec with { Training = spec.Training with { MaxSteps = Break } }, data, before));
        Assert.Equal(Break, first.Progress.Step);
        var rest = await Finished(coordinator.Submit(spec, data, after, resumeJob: first.Id));

        var info = rest.Progress;
        Assert.Equal(first.Id, info.ResumedFrom);
        Assert.Equal(Break, info.StartStep);
        Assert.Equal(Total, info.Step);
        Assert.Equal(after, info.WorkerIds.Count);
        // Steps 8..12 and nothing before, each with the loss the uninterrupted job had at that step.
        AssertSameLosses(StepLosses(whole), StepLosses(rest), Break, Total);
        Assert.Empty(SampleLedger.Check(rest.Ledger.Snapshot(), Break, Total));
        using var continued = TrainedModel.Load(info.Checkpoint);
        Assert.Equal(Total, continued.State.Step);
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, continued.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{Break} steps on {before} + {Total - Break} resumed on {after} vs {Total} in one process: max |dp| / max |p| = {relative:E2}");
        // And it did continue: the first job's model is not the final one.
        using var atBreak = TrainedModel.Load(first.Progress.Checkpoint);
        Assert.True(ParameterDiff.MaxRelative(reference.Engine.Parameters, atBreak.Engine.Parameters) > 1e-3);
    }

    [Fact]
    public async Task A_coordinator_stopped_mid_job_and_started_again_with_new_workers_re_drives_the_job_from_its_newest_checkpoint()
    {
        const int steps = 24;
        using var tmp = new TempDir();
        var (data, spec) = Job(tmp, steps, checkpointInterval: 4);
        var dir = Path.Combine(tmp.Path, "coordinator");
        var first = await InMemoryCoordinator.StartAsync(dir, "a", "b");
        await using var _ = first;
        // The reference: the same job, uninterrupted. It is also the finished job that must stay listed.
        var clean = await Finished(first.Submit(spec, data, 2));

        // The coordinator stops while step 11 (index 10) runs, the checkpoint of step 8 saved: the step is held until the stop is under way.
        var reached = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var gate = new ManualResetEventSlim();
        JobRecord? job = null;
        first.Handle("a").BeforeStep = step =>
        {
            if (job is null || step.JobId != job.Id || step.Step != 10) return true;
            reached.TrySetResult(job.Progress.Checkpoint);
            gate.Wait(TimeSpan.FromMinutes(1));
            return true;
        };
        job = first.Submit(spec, data, 2);
        var newest = await reached.Task.WaitAsync(TimeSpan.FromMinutes(2));
        Assert.EndsWith("ckpt-000000008.dtck", newest);
        var stopping = first.StopAsync();
        gate.Set();
        await stopping;
        Assert.Equal(JobStatus.Running, job.Status);
        Assert.InRange(job.Progress.Step, 8, 10);

        // Another coordinator on the same data directory, with other workers (so other handles).
        await using var second = await InMemoryCoordinator.StartAsync(dir, "c", "d");
        var again = second.Jobs.Get(job.Id);
        Assert.NotSame(job, again);
        await Finished(again);

        var info = again.Progress;
        Assert.Equal(0, info.Restarts);
        Assert.Equal(8, info.StartStep);
        Assert.Equal(steps, info.Step);
        Assert.Equal(second.Registry.Snapshot().Select(w => w.Id).Order(), info.WorkerIds.Order());
        // Steps 9..24 trained again by the new workers, each with the loss the uninterrupted job had.
        AssertSameLosses(StepLosses(clean), StepLosses(again), 8, steps);
        Assert.Empty(SampleLedger.Check(again.Ledger.Snapshot(), 0, steps));
        using (var a = TrainedModel.Load(clean.Progress.Checkpoint))
        using (var b = TrainedModel.Load(info.Checkpoint))
        {
            var relative = ParameterDiff.MaxRelative(a.Engine.Parameters, b.Engine.Parameters);
            Assert.True(relative <= 1e-5, $"restarted vs uninterrupted: max |dp| / max |p| = {relative:E2}");
        }
        // The finished job stays listed as it was.
        var kept = second.Jobs.Get(clean.Id);
        Assert.Equal(JobStatus.Succeeded, kept.Status);
        Assert.Equal(clean.Progress.Checkpoint, kept.Progress.Checkpoint);
    }
}
