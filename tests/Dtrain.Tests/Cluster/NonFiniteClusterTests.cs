using Dtrain.Checkpoints;
using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Dtrain.Worker;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A non-finite loss or gradient on one worker of a cluster job: every replica skips that step alike (the checksums,
/// compared at every step here, stay equal), the job goes on and ends with the parameters of a local run that skipped
/// the same step; too many skips in a row fail the job with the step, the cause and the remedy; a checkpoint of
/// non-finite parameters is refused. Faults come from a worker's fault drill (Worker:InjectNonFinite, the real worker
/// path) or from real divergence (a learning rate whose first update overflows).
/// </summary>
public class NonFiniteClusterTests
{
    static readonly CoordinatorOptions EveryStepChecked = new() { ChecksumInterval = 1 };

    static JobSpec Spec(TempDir tmp, int steps = 10)
    {
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: steps);
        // An odd global batch over 3 replicas: uneven rows.
        return spec with { Training = spec.Training with { BatchSize = 7, SeqLen = 12, EvalInterval = 0, CheckpointInterval = 0 } };
    }

    static TrainedModel Local(TempDir tmp, JobSpec spec, string name, string? inject) =>
        TrainedModel.Load(Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, name), InjectNonFinite = inject is null ? null : NonFiniteInjection.Parse(inject, "test") },
            new NullObserver(), CancellationToken.None).Checkpoint!);

    static (List<StepEvent> Steps, List<string> Logs) Events(JobRecord job)
    {
        var steps = new List<StepEvent>();
        var logs = new List<string>();
        var history = job.Watch();
        while (history.TryRead(out var notice))
        {
            var e = job.ToProto(notice);
            if (e.Step is { } s) steps.Add(s);
            if (e.KindCase == JobEvent.KindOneofCase.Log) logs.Add(e.Log);
        }
        return (steps, logs);
    }

    static async Task<(JobInfo Info, List<StepEvent> Steps, List<string> Logs)> RunOnClusterAsync(InProcessCluster cluster, string specPath, int workers)
    {
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(specPath), workers)).JobId;
        var steps = new List<StepEvent>();
        var logs = new List<string>();
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        using var call = cluster.Client.Watch(new WatchJobRequest { JobId = id }, cancellationToken: cts.Token);
        while (await call.ResponseStream.MoveNext(cts.Token))
        {
            var e = call.ResponseStream.Current;
            if (e.Step is { } s) steps.Add(s);
            if (e.KindCase == JobEvent.KindOneofCase.Log) logs.Add(e.Log);
        }
        return (cluster.Client.Get(new GetJobRequest { JobId = id }), steps, logs);
    }

    [Theory]
    [InlineData(NonFiniteCauses.Loss, 1, "non-finite loss (NaN from rank 1, worker mem1)")]
    [InlineData(NonFiniteCauses.Gradient, 2, "non-finite gradient (norm Infinity after summing over the replicas)")]
    public async Task In_memory_one_replicas_non_finite_step_is_skipped_by_every_replica_and_the_result_is_a_local_run_that_skipped_it(string cause, int rank, string detail)
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        using var skipping = Local(tmp, spec, "local-skip", $"{cause}:4");
        using var clean = Local(tmp, spec, "local-clean", null);

        var dir = Path.Combine(tmp.Path, "job");
        var job = new JobRecord("job-0001", spec with { Output = dir }, dir, 3, DateTimeOffset.UtcNow);
        job.Transition(JobTrigger.Start, "preparing data"); // as the runner does before the driver
        await using (var workers = new InMemoryJobWorkers(3, r => r == rank ? new WorkerOptions { InjectNonFinite = $"{cause}:4" } : new WorkerOptions()))
        {
            var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);
            // Checksums at every step: a replica that applied step 4 while another skipped it would fail the job.
            await new DataParallelDriver(EveryStepChecked).RunAsync(job, prepared, workers, CancellationToken.None);
        }

        var info = job.Progress;
        Assert.Equal(10, info.Step);
        var (steps, logs) = Events(job);
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (long)i), steps.Select(s => s.Step));
        var skipped = Assert.Single(steps, s => s.Skipped);
        Assert.Equal(4, skipped.Step);
        Assert.Equal(cause, skipped.Nonfinite);
        Assert.Contains($"step 4 skipped: {detail}; no parameter or optimizer state changed (1 in a row; the run fails at 5, training.max_nonfinite_steps)", logs);

        using var distributed = TrainedModel.Load(info.Checkpoint);
        var relative = ParameterDiff.MaxRelative(skipping.Engine.Parameters, distributed.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"vs the local run that skipped step 4: max |dp| / max |p| = {relative:E2}");
        // ... and the skip mattered: a run that took step 4 ends elsewhere.
        var fromClean = ParameterDiff.MaxRelative(clean.Engine.Parameters, distributed.Engine.Parameters);
        Assert.True(fromClean > 1e-3, $"vs the local run that took step 4: {fromClean:E2}");
    }

    [Fact]
    public async Task In_memory_max_nonfinite_steps_in_a_row_fail_the_job_with_the_step_the_cause_and_the_remedy()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        spec = spec with { Training = spec.Training with { MaxNonfiniteSteps = 3 } };
        var dir = Path.Combine(tmp.Path, "job");
        var job = new JobRecord("job-0001", spec with { Output = dir }, dir, 3, DateTimeOffset.UtcNow);
        job.Transition(JobTrigger.Start, "preparing data"); // as the runner does before the driver
        await using var workers = new InMemoryJobWorkers(3, r => r == 0 ? new WorkerOptions { InjectNonFinite = "loss:3,4,5" } : new WorkerOptions());
        var prepared = await PreparedJob.LoadAsync(job, CancellationToken.None);
        var e = await Assert.ThrowsAsync<JobFailure>(() => new DataParallelDriver(EveryStepChecked).RunAsync(job, prepared, workers, CancellationToken.None));
        Assert.True(e.Terminal);
        Assert.Equal("3 consecutive steps (3-5) were skipped for a non-finite loss or gradient (step 5: non-finite loss (NaN from rank 0, worker mem0)): training is diverging; " +
            "lower optimizer.lr (now 0.01) or lower training.clip_norm (now 1)", e.Message);
        var (steps, logs) = Events(job);
        Assert.Equal([3L, 4L, 5L], steps.Where(s => s.Skipped).Select(s => s.Step));
        Assert.Contains(logs, l => l.StartsWith("step 5 skipped: non-finite loss (NaN from rank 0, worker mem0); no parameter or optimizer state changed (3 in a row", StringComparison.Ordinal));
    }

    [Fact]
    public async Task On_a_cluster_one_workers_non_finite_loss_is_skipped_everywhere_watch_shows_it_and_the_model_equals_the_local_skipping_run()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        using var skipping = Local(tmp, spec, "local-skip", "loss:6");

        await using var cluster = await InProcessCluster.StartAsync(0, EveryStepChecked);
        await cluster.AddWorkerAsync();
        await cluster.AddWorkerAsync(new WorkerOptions { InjectNonFinite = "loss:6" });
        await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(3, TimeSpan.FromSeconds(30));
        var (info, steps, logs) = await RunOnClusterAsync(cluster, path, 3);

        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(10, info.Step);
        Assert.Equal([6L], steps.Where(s => s.Skipped).Select(s => s.Step));
        Assert.True(double.IsNaN(steps.Single(s => s.Step == 6).Loss));
        var line = Assert.Single(logs, l => l.StartsWith("step 6 skipped: ", StringComparison.Ordinal));
        Assert.Matches(@"^step 6 skipped: non-finite loss \(NaN from rank [0-2], worker [^;)]+\); no parameter or optimizer state changed \(1 in a row", line);
        using var distributed = TrainedModel.Load(cluster.CheckpointFile(info));
        var relative = ParameterDiff.MaxRelative(skipping.Engine.Parameters, distributed.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"vs the local run that skipped step 6: max |dp| / max |p| = {relative:E2}");

        // `dtrain watch` (plain) replays the finished job: the skipped step and the line saying so.
        var watch = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken }, "watch", info.JobId, "--plain", "--coordinator", cluster.Address);
        Assert.True(watch.ExitCode == 0, watch.ToString());
        Assert.Contains("step 6/10 epoch 1 loss NaN (skipped: non-finite loss) lr", watch.Stdout);
        Assert.Contains(line, watch.Stdout);
    }

    [Fact]
    public async Task On_a_cluster_the_count_of_skipped_steps_in_a_row_goes_on_in_a_job_resumed_from_the_checkpoint()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, steps: 5);
        spec = spec with { Training = spec.Training with { MaxNonfiniteSteps = 3 } };
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        await using var cluster = await InProcessCluster.StartAsync(0);
        // The worker's fault drill: a non-finite loss at steps 4, 5 and 6.
        await cluster.AddWorkerAsync(new WorkerOptions { InjectNonFinite = "loss:4,5,6" });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        var (first, _, _) = await RunOnClusterAsync(cluster, path, 1);
        Assert.True(first.State == JobState.Succeeded, $"{first.State}: {first.Message}");
        using (var file = File.OpenRead(cluster.CheckpointFile(first)))
            Assert.Equal(2, TrainingCheckpoint.ReadState(CheckpointFormat.Read(file, first.Checkpoint), first.Checkpoint).NonFiniteStreak);

        // Resumed to 8 steps: step 6 is the third skipped in a row.
        var longer = tmp.Write("longer.json", JobSpecSerializer.Serialize(spec with { Training = spec.Training with { MaxSteps = 8 } }));
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(longer), 1);
        request.ResumeJob = first.JobId;
        var id = cluster.Client.Submit(request).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Equal(6, info.Step);
        Assert.StartsWith("3 consecutive steps (4-6) were skipped", info.Message);
    }

    [Fact]
    public async Task On_a_cluster_real_divergence_fails_the_job_after_max_nonfinite_steps()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        // No fault injected: step 1's update sends the parameters to ~1e37 (finite gradients, absurd rate); from step 2
        // on every replica's forward pass overflows.
        var diverging = spec with { Optimizer = spec.Optimizer with { Lr = 1e37 }, Training = spec.Training with { MaxNonfiniteSteps = 2 } };
        var path = tmp.Write("diverge.json", JobSpecSerializer.Serialize(diverging));

        await using var cluster = await InProcessCluster.StartAsync(2, EveryStepChecked);
        var (info, steps, _) = await RunOnClusterAsync(cluster, path, 2);
        Assert.Equal(JobState.Failed, info.State);
        Assert.Matches(@"^2 consecutive steps \(2-3\) were skipped for a non-finite loss or gradient \(step 3: non-finite loss \((NaN|Infinity) from rank 0, worker [^;]+; rank 1, worker [^)]+\)\): training is diverging; " +
            @"lower optimizer\.lr \(now 1E\+37\) or lower training\.clip_norm \(now 1\)$", info.Message);
        Assert.Equal([2L, 3L], steps.Where(s => s.Skipped).Select(s => s.Step));
    }

    [Fact]
    public async Task On_a_cluster_a_checkpoint_of_non_finite_parameters_is_refused_by_the_worker_and_none_is_written()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp);
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec with { Training = spec.Training with { CheckpointInterval = 2 } }));
        await using var cluster = await InProcessCluster.StartAsync(0);
        // Both replicas' parameters turn NaN after step 3 (corruption no skip can prevent); rank 0's state is refused at the step 4 checkpoint.
        await cluster.AddWorkerAsync(new WorkerOptions { InjectNonFinite = "parameters:3" });
        await cluster.AddWorkerAsync(new WorkerOptions { InjectNonFinite = "parameters:3" });
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var (info, _, logs) = await RunOnClusterAsync(cluster, path, 2);
        Assert.Equal(JobState.Failed, info.State);
        Assert.Matches(@"^worker \S+ \(http://127\.0\.0\.1:\d+\) failed checkpoint at step 4: FailedPrecondition: refusing to write a checkpoint at step 4: \d[\d,]* parameter value\(s\) are NaN or infinite \(embedding\.weight \(", info.Message);
        // The step 2 checkpoint was written; none after it.
        Assert.EndsWith("ckpt-000000002.dtck", info.Checkpoint);
        Assert.Equal(["ckpt-000000002.dtck"], Directory.EnumerateFiles(cluster.DataDir, "*.dtck", SearchOption.AllDirectories).Select(Path.GetFileName));
        Assert.Single(logs, l => l.StartsWith("step 2: checkpoint ", StringComparison.Ordinal));
    }

    static JobSpec PipelineSpec(TempDir tmp)
    {
        tmp.Write("t.txt", TestJobs.Text(120));
        var spec = TestJobs.CharLm("t.txt", steps: 8);
        return spec with
        {
            Model = spec.Model with { Layers = 4, EmbeddingDim = 8, HiddenSize = 16 },
            // SGD with a small clip norm: a step taken by one stage and not the other, or a wrong global norm, would show.
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = spec.Training with { BatchSize = 8, SeqLen = 12, ClipNorm = 0.05, EvalInterval = 0, CheckpointInterval = 0 },
        };
    }

    static JobSpec Pipelined(JobSpec spec) => spec with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2, Schedule = "1f1b" } } };

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public async Task Pipeline_of_2_stages_skips_a_non_finite_step_on_every_stage_and_ends_with_the_local_skipping_runs_model(int faultyStage)
    {
        using var tmp = new TempDir();
        var spec = PipelineSpec(tmp);
        using var skipping = Local(tmp, spec, "local-skip", "loss:4");
        using var clean = Local(tmp, spec, "local-clean", null);
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(Pipelined(spec)));

        await using var cluster = await InProcessCluster.StartAsync(0, EveryStepChecked);
        // Stages go to workers in registration order. On the last stage the drill makes the loss NaN; on the first, the
        // activation it sends on — so the last stage's carried hidden state turns NaN too and must be rolled back.
        for (var stage = 0; stage < 2; stage++)
        {
            await cluster.AddWorkerAsync(stage == faultyStage ? new WorkerOptions { InjectNonFinite = "loss:4" } : null);
            await cluster.WaitForIdleAsync(stage + 1, TimeSpan.FromSeconds(30));
        }
        var faulty = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == $"test-{faultyStage + 1}").WorkerId;
        var (info, steps, logs) = await RunOnClusterAsync(cluster, path, 2);

        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(8, info.Step);
        var skipped = Assert.Single(steps, s => s.Skipped);
        Assert.Equal(4, skipped.Step);
        Assert.Equal(NonFiniteCauses.Loss, skipped.Nonfinite);
        Assert.Contains(logs, l => l.StartsWith("pipeline: ", StringComparison.Ordinal) && l.Contains($"replica 0 stage {faultyStage} (layers ", StringComparison.Ordinal) &&
            l.Contains($"stage {faultyStage} (layers {faultyStage * 2}-{faultyStage * 2 + 1}) = {faulty} ", StringComparison.Ordinal));
        Assert.Single(logs, l => l.StartsWith("step 4 skipped: non-finite loss (NaN from replica 0, worker ", StringComparison.Ordinal));
        using var gathered = TrainedModel.Load(cluster.CheckpointFile(info));
        var relative = ParameterDiff.MaxRelative(skipping.Engine.Parameters, gathered.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"vs the local run that skipped step 4: max |dp| / max |p| = {relative:E2}");
        var fromClean = ParameterDiff.MaxRelative(clean.Engine.Parameters, gathered.Engine.Parameters);
        Assert.True(fromClean > 1e-3, $"vs the local run that took step 4: {fromClean:E2}");
    }

    [Fact]
    public async Task Pipeline_fails_after_max_nonfinite_steps_in_a_row()
    {
        using var tmp = new TempDir();
        var spec = Pipelined(PipelineSpec(tmp));
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(spec with { Training = spec.Training with { MaxNonfiniteSteps = 2 } }));
        await using var cluster = await InProcessCluster.StartAsync(0);
        await cluster.AddWorkerAsync(new WorkerOptions { InjectNonFinite = "gradient:2,3" });
        await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var (info, steps, _) = await RunOnClusterAsync(cluster, path, 2);
        Assert.Equal(JobState.Failed, info.State);
        Assert.Matches(@"^2 consecutive steps \(2-3\) were skipped for a non-finite loss or gradient \(step 3: non-finite gradient \(norm Infinity in stage [01]\)\): training is diverging; " +
            @"lower optimizer\.lr \(now 0\.5\) or lower training\.clip_norm \(now 0\.05\)$", info.Message);
        Assert.Equal([2L, 3L], steps.Where(s => s.Skipped).Select(s => s.Step));
        Assert.All(steps.Where(s => s.Skipped), s => Assert.Equal(NonFiniteCauses.Gradient, s.Nonfinite));
    }

    [Fact]
    public async Task Pipeline_refuses_to_gather_a_checkpoint_of_non_finite_parameters()
    {
        using var tmp = new TempDir();
        var spec = Pipelined(PipelineSpec(tmp));
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(spec with { Training = spec.Training with { CheckpointInterval = 2 } }));
        await using var cluster = await InProcessCluster.StartAsync(0);
        // One stage's parameters turn NaN after step 3: the model gathered for the step 4 checkpoint is refused.
        await cluster.AddWorkerAsync(new WorkerOptions { InjectNonFinite = "parameters:3" });
        await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var (info, _, _) = await RunOnClusterAsync(cluster, path, 2);
        Assert.Equal(JobState.Failed, info.State);
        Assert.StartsWith("gathered from every stage: refusing to write a checkpoint at step 4: ", info.Message);
        Assert.Equal(["ckpt-000000002.dtck"], Directory.EnumerateFiles(cluster.DataDir, "*.dtck", SearchOption.AllDirectories).Select(Path.GetFileName));
    }

    [Theory]
    [InlineData("nan:3", "\"nan:3\" must be loss:STEPS, gradient:STEPS or parameters:STEPS")]
    [InlineData("loss:0", "step \"0\" in \"loss:0\" must be a whole number >= 1")]
    [InlineData("gradient:2,x", "step \"x\" in \"gradient:2,x\" must be a whole number >= 1")]
    [InlineData("loss", "\"loss\" names no step; e.g. loss:3")]
    public void A_malformed_fault_drill_stops_the_worker_naming_the_key(string value, string expected)
    {
        var error = Assert.Single(new WorkerOptions { InjectNonFinite = value }.Validate());
        Assert.StartsWith($"Worker:InjectNonFinite: {expected}", error);
        Assert.Throws<ArgumentException>(() => WorkerHost.Build(new WorkerOptions { InjectNonFinite = value }));
    }

    sealed class NullObserver : ITrainingObserver;
}
