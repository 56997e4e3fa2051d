using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Resuming on a cluster (real coordinator and workers on loopback): a job continues from a checkpoint — of an
/// earlier job on the coordinator, or uploaded — with another parallelism, and ends with the parameters one process
/// training without a break would have.
/// </summary>
public class ClusterResumeTests
{
    const int Total = 12, Break = 7;

    /// <summary>Adam (its moments must travel), random windows (no carried state), no dropout, a constant learning rate.</summary>
    static JobSpec Spec(TempDir tmp, string task)
    {
        if (task == TaskKinds.LanguageModel)
        {
            tmp.Write("t.txt", TestJobs.Text(120));
            var lm = TestJobs.CharLm("t.txt", steps: Total);
            return lm with
            {
                Model = lm.Model with { Layers = 4, EmbeddingDim = 8, HiddenSize = 16 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
                Training = lm.Training with { BatchSize = 8, SeqLen = 12, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 0 },
            };
        }
        tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(110));
        var c = TestJobs.Classifier("d.jsonl", steps: Total);
        return c with
        {
            Model = c.Model with { Layers = 4, EmbeddingDim = 8, HiddenSize = 12 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
            Training = c.Training with { BatchSize = 8, EvalInterval = 0, CheckpointInterval = 0 },
        };
    }

    static ParallelismSpec? Layout(string name) => name switch
    {
        "none" => null,
        "data2" => null, // pure data parallelism: the number of workers decides
        "pipe2" => new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        "pipe3" => new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 3, Microbatches = 4, Schedule = "gpipe" } },
        "2x2" => new ParallelismSpec { Data = 2, Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        _ => throw new ArgumentException(name),
    };

    static int Workers(string name) => name switch { "none" => 1, "data2" or "pipe2" => 2, "pipe3" => 3, "2x2" => 4, _ => throw new ArgumentException(name) };

    public static TheoryData<string, string, string> Changes => new()
    {
        { TaskKinds.LanguageModel, "pipe3", "data2" },
        { TaskKinds.LanguageModel, "data2", "2x2" },
        { TaskKinds.LanguageModel, "2x2", "none" },
        { TaskKinds.Classification, "pipe2", "data2" },
        { TaskKinds.LanguageModel, "pipe2", "pipe2" },
    };

    [Theory]
    [MemberData(nameof(Changes))]
    public async Task A_job_resumed_from_another_jobs_checkpoint_with_another_layout_ends_as_one_uninterrupted_process(string task, string before, string after)
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, task);
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);

        await using var cluster = await InProcessCluster.StartAsync(4);
        var first = spec with { Training = spec.Training with { MaxSteps = Break }, Parallelism = Layout(before) };
        var firstId = Submit(cluster, tmp, "first.json", first, Workers(before));
        var firstInfo = await cluster.WaitAsync(firstId, TimeSpan.FromMinutes(3));
        Assert.True(firstInfo.State == JobState.Succeeded, $"{firstInfo.State}: {firstInfo.Message}");

        var rest = spec with { Parallelism = Layout(after) };
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("rest.json", JobSpecSerializer.Serialize(rest))), Workers(after));
        Dtrain.Cli.JobCommands.AddResume(cluster.Client, request, firstId);
        var restId = cluster.Client.Submit(request).JobId;
        var info = await cluster.WaitAsync(restId, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(firstId, info.ResumedFrom);
        Assert.Equal(Break, info.StartStep);
        Assert.Equal(Total, info.Step);

        using var continued = TrainedModel.Load(cluster.CheckpointFile(info));
        Assert.Equal(Total, continued.State.Step);
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, continued.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{task}: {Break} steps on {before} + {Total - Break} resumed on {after} vs {Total} in one process: max |dp| / max |p| = {relative:E2}");
        // And it did continue: the first job's model is not the final one.
        using var atBreak = TrainedModel.Load(cluster.CheckpointFile(firstInfo));
        Assert.True(ParameterDiff.MaxRelative(reference.Engine.Parameters, atBreak.Engine.Parameters) > 1e-3);
    }

    [Fact]
    public async Task A_local_checkpoint_is_uploaded_and_continues_on_a_pipeline()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, TaskKinds.LanguageModel);
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);
        var local = Path.Combine(tmp.Path, "local");
        Trainer.Run(spec with { Training = spec.Training with { MaxSteps = Break } }, tmp.Path, new TrainOptions { OutputDir = local }, new NullObserver(), CancellationToken.None);

        await using var cluster = await InProcessCluster.StartAsync(2);
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("rest.json", JobSpecSerializer.Serialize(spec with { Parallelism = Layout("pipe2") }))), 2);
        Dtrain.Cli.JobCommands.AddResume(cluster.Client, request, local); // a run directory: its newest checkpoint is uploaded
        Assert.NotEqual("", request.ResumeUpload);
        var id = cluster.Client.Submit(request).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(Break, info.StartStep);
        using var continued = TrainedModel.Load(cluster.CheckpointFile(info));
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, continued.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{Break} local steps + {Total - Break} on 2 stages vs {Total} in one process: max |dp| / max |p| = {relative:E2}");
    }

    [Fact]
    public async Task Dtrain_resume_continues_a_cancelled_job_from_its_newest_checkpoint_with_its_own_spec_and_data()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, TaskKinds.LanguageModel);
        spec = spec with { Training = spec.Training with { MaxSteps = 400, CheckpointInterval = 3 } };
        await using var cluster = await InProcessCluster.StartAsync(2);
        var id = Submit(cluster, tmp, "long.json", spec, 2);
        // Cancel once a checkpoint exists.
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (cluster.Client.Get(new GetJobRequest { JobId = id }).Checkpoint == "")
        {
            Assert.True(DateTime.UtcNow < deadline, "no checkpoint within 2 minutes");
            await Task.Delay(50);
        }
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
        var cancelled = await cluster.WaitAsync(id, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Cancelled, cancelled.State);
        var saved = TrainedModel.Load(cluster.CheckpointFile(cancelled));
        var savedStep = saved.State.Step;
        saved.Dispose();

        var admin = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken };
        var result = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), admin, "resume", id, "--coordinator", cluster.Address);
        Assert.True(result.ExitCode == 0, result.ToString());
        var newId = result.Stdout.Trim();
        Assert.NotEqual(id, newId);
        var status = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), admin, "status", newId, "--coordinator", cluster.Address);
        Assert.Contains($"resumed from {id} at step {savedStep}", status.Stdout);
        cluster.Client.Cancel(new CancelJobRequest { JobId = newId });
        var info = await cluster.WaitAsync(newId, TimeSpan.FromMinutes(1));
        Assert.Equal(savedStep, info.StartStep);
        Assert.Equal(id, info.ResumedFrom);
        Assert.Equal(2, info.WorkersRequested);
    }

    [Fact]
    public async Task Resuming_what_cannot_be_resumed_is_refused_with_the_reason()
    {
        using var tmp = new TempDir();
        var spec = Spec(tmp, TaskKinds.LanguageModel);
        await using var cluster = await InProcessCluster.StartAsync(1);
        var first = Submit(cluster, tmp, "first.json", spec with { Training = spec.Training with { MaxSteps = 3 } }, 1);
        var done = await cluster.WaitAsync(first, TimeSpan.FromMinutes(2));
        Assert.Equal(JobState.Succeeded, done.State);

        RpcException Refused(SubmitRequest r) => Assert.Throws<RpcException>(() => cluster.Client.Submit(r));

        // Another model: named field by field.
        var other = spec with { Model = spec.Model with { Layers = 2, HiddenSize = 24 } };
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("other.json", JobSpecSerializer.Serialize(other))), 1);
        request.ResumeJob = first;
        var e = Refused(request);
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("$.model.layers", e.Status.Detail);
        Assert.Contains("$.model.hidden_size", e.Status.Detail);

        // Ids that are not jobs, including path tricks.
        foreach (var bad in new[] { "job-9999", "../../etc", "job-0001/../../x" })
            Assert.Equal(StatusCode.NotFound, Refused(new SubmitRequest { ResumeJob = bad }).StatusCode);

        // An upload that is not a checkpoint.
        var garbage = Dtrain.Cli.JobCommands.Upload(cluster.Client, tmp.Write("garbage.dtck", "not a checkpoint"));
        e = Refused(new SubmitRequest { SpecJson = JobSpecSerializer.Serialize(spec with { Data = spec.Data with { Format = DataFormats.Synthetic, Synthetic = new SyntheticSpec() } }), ResumeUpload = garbage });
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("not valid", e.Status.Detail);

        // A job that is still running.
        var running = Submit(cluster, tmp, "long.json", spec with { Training = spec.Training with { MaxSteps = 100_000 } }, 1);
        e = Refused(new SubmitRequest { ResumeJob = running });
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("cancel it", e.Status.Detail);
        cluster.Client.Cancel(new CancelJobRequest { JobId = running });

        // Another submitter may not resume it (its model would be theirs): the job does not exist for them.
        var (mallory, _, _) = Dtrain.Tests.Security.AuthTestSupport.Token(cluster, "mallory", Dtrain.Server.Auth.Role.Submitter);
        Assert.Equal(StatusCode.NotFound, Assert.Throws<RpcException>(() => mallory.Submit(new SubmitRequest { ResumeJob = first, Workers = 1 })).StatusCode);

        // Nothing left to train (its checkpoint is at training.max_steps): refused at once, not a job that fails.
        e = Refused(new SubmitRequest { ResumeJob = first, Workers = 1 });
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("is at step 3 and training.max_steps is 3: nothing left to train", e.Status.Detail);
    }

    static string Submit(InProcessCluster cluster, TempDir tmp, string name, JobSpec spec, int workers) =>
        cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write(name, JobSpecSerializer.Serialize(spec))), workers)).JobId;

    sealed class NullObserver : ITrainingObserver;
}
