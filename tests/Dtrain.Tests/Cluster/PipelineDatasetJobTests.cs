using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Data.Storage;
using Dtrain.Tests.Support;
using Dtrain.Protos.Worker;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A pipeline job (parallelism.pipeline) that names a prepared dataset, on a real coordinator and real workers over
/// gRPC on loopback: every stage reads its replica's rows from the dataset (no token on the wire) and the job trains
/// exactly the losses of the same data in memory; the coordinator evaluates the gathered model on the dataset's
/// validation split (checked as read); a dataset pipeline job resumes from its checkpoint; a missing, changed or bad
/// shard fails the job naming it.
/// </summary>
[Collection(DatasetJobCollection.Name)]
public sealed class PipelineDatasetJobTests
{
    const int Steps = 10;

    static (JobSpec Spec, string File) MemoryJob(TempDir tmp, string task, int stages, int replicas, int micro = 2)
    {
        var parallelism = new ParallelismSpec { Data = replicas, Pipeline = new PipelineSpec { Stages = stages, Microbatches = micro, Schedule = PipelineSchedule1F1B } };
        if (task == TaskKinds.LanguageModel)
        {
            var file = tmp.Write("t.txt", TestJobs.Text(120));
            var lm = TestJobs.CharLm("t.txt", steps: Steps);
            return (lm with
            {
                Model = lm.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 16 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
                Training = lm.Training with { BatchSize = 8, SeqLen = 12, ClipNorm = 0.05, EvalInterval = 5, CheckpointInterval = 0 },
                Parallelism = parallelism,
            }, file);
        }
        var jsonl = tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(90));
        var clf = TestJobs.Classifier("d.jsonl", steps: Steps);
        // 72 training examples, batch 10: the last batch of an epoch has 2 rows.
        return (clf with
        {
            Model = clf.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 12, Bidirectional = true },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = clf.Training with { BatchSize = 10, ClipNorm = 0.05, EvalInterval = 5, CheckpointInterval = 0 },
            Parallelism = parallelism,
        }, jsonl);
    }

    const string PipelineSchedule1F1B = "1f1b";

    static string Prepare(JobSpec spec, string file, string output) => DatasetJobTests.Prepare(spec, file, output);

    static JobSpec DatasetJob(JobSpec memory, string dataset) => DatasetJobTests.DatasetJob(memory, dataset);

    static int Workers(JobSpec spec) => spec.Parallelism!.Pipeline!.Stages * spec.Parallelism.Data;

    static async Task<(JobInfo Info, double[] Losses)> RunAsync(InProcessCluster cluster, TempDir tmp, JobSpec spec, string name, string? resumeFrom = null)
    {
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write(name, JobSpecSerializer.Serialize(spec))), Workers(spec));
        if (resumeFrom is not null) Dtrain.Cli.JobCommands.AddResume(cluster.Client, request, resumeFrom);
        var id = cluster.Client.Submit(request).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        var losses = cluster.Client.History(new GetJobRequest { JobId = id }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step.Loss).ToArray();
        return (info, losses);
    }

    static Task<InProcessCluster> StartAsync(string dataRoot, ShardTap tap, int workers) => DatasetJobTests.StartAsync(dataRoot, tap, workers);

    static void AssertSameLosses(double[] expected, double[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-6 * Math.Max(1, Math.Abs(expected[i])),
                $"{what}, step {i + 1}: loss {actual[i]:R}, from memory {expected[i]:R}");
    }

    public static TheoryData<string, int, int, int> Layouts => new()
    {
        { TaskKinds.LanguageModel, 2, 2, 2 },
        { TaskKinds.Classification, 2, 1, 2 },
        // Batch 10 over 2 replicas: 5 rows each, one micro-batch.
        { TaskKinds.Classification, 2, 2, 1 },
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public async Task A_pipeline_job_trains_the_same_losses_from_a_prepared_dataset_as_from_memory_with_no_token_on_the_wire(string task, int stages, int replicas, int micro)
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, task, stages, replicas, micro);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var tap = new ShardTap();
        await using var cluster = await StartAsync(tmp.Path, tap, stages * replicas);

        var (memory, memoryLosses) = await RunAsync(cluster, tmp, spec, "memory.json");
        Assert.True(memory.State == JobState.Succeeded, $"from memory: {memory.State} {memory.Message}");
        Assert.Equal(Steps, memoryLosses.Length);
        Assert.True(tap.Values > 0, "the tap sees the rows of a pipeline job from memory");
        tap.Reset();

        var (fromDataset, datasetLosses) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.True(fromDataset.State == JobState.Succeeded, $"from the dataset: {fromDataset.State} {fromDataset.Message}");
        AssertSameLosses(memoryLosses, datasetLosses, $"{task}, {replicas} x {stages} stages from the dataset");
        // The coordinator evaluated the gathered model on the dataset's validation split: the figures of memory's.
        Assert.True(Math.Abs(memory.LastEval.Loss - fromDataset.LastEval.Loss) <= 1e-6 * Math.Max(1, memory.LastEval.Loss),
            $"validation loss {fromDataset.LastEval.Loss:R}, from memory {memory.LastEval.Loss:R}");
        if (task == TaskKinds.Classification) Assert.Equal(memory.LastEval.Accuracy, fromDataset.LastEval.Accuracy, 9);
        // Only the plan went to the workers: every stage of every replica got every step's row range, and no stage a validation split.
        Assert.Equal(0, tap.Values);
        Assert.True(tap.PlannedSteps >= Steps * stages * replicas, $"{tap.PlannedSteps} planned steps reached the workers");
        Assert.Equal(0, tap.DatasetValidation);
        // Every step says how long its stages waited for their rows (the longest): something, and less than the step.
        var steps = cluster.Client.History(new GetJobRequest { JobId = fromDataset.JobId }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step).ToList();
        Assert.All(steps, s => Assert.True(s.DataWaitMs > 0 && s.DataWaitMs < s.StepMs, $"step {s.Step}: data wait {s.DataWaitMs} ms of {s.StepMs} ms"));
    }

    [S3Fact]
    public async Task A_pipeline_job_trains_from_an_s3_dataset_the_same_losses_as_from_memory()
    {
        using var tmp = new TempDir();
        using var server = await S3TestServer.StartAsync(Path.Combine(tmp.Path, "s3"));
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel, 2, 1);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var uri = $"s3://{server.Bucket}/datasets/lm";
        using (var upload = new S3DatasetStore(uri, server.Options(Path.Combine(tmp.Path, "upload-cache"))))
            await upload.UploadDirectoryAsync(dataset, [DatasetLayout.ManifestFile]);
        var environment = server.ClientEnvironment(Path.Combine(tmp.Path, "cache"));
        using (ProcessEnvironment.Set(environment))
        {
            var tap = new ShardTap();
            await using var cluster = await StartAsync(tmp.Path, tap, 2);
            var (memory, memoryLosses) = await RunAsync(cluster, tmp, spec, "memory.json");
            Assert.True(memory.State == JobState.Succeeded, $"from memory: {memory.State} {memory.Message}");
            tap.Reset();
            var (fromS3, s3Losses) = await RunAsync(cluster, tmp, DatasetJob(spec, uri), "s3.json");
            Assert.True(fromS3.State == JobState.Succeeded, $"from S3: {fromS3.State} {fromS3.Message}");
            AssertSameLosses(memoryLosses, s3Losses, "2 stages from S3");
            Assert.True(Math.Abs(memory.LastEval.Loss - fromS3.LastEval.Loss) <= 1e-6 * Math.Max(1, memory.LastEval.Loss),
                $"validation loss {fromS3.LastEval.Loss:R}, from memory {memory.LastEval.Loss:R}");
            Assert.Equal(0, tap.Values);
            await server.FlushLogAsync();
            Assert.True(server.Count("GET", "train-00000.tokens") >= 1, "the stages fetched the training shards from S3");
            Assert.True(server.Count("GET", "validation-00000.tokens") >= 1, "the coordinator fetched the validation shard from S3");
        }
    }

    [Fact]
    public async Task A_dataset_pipeline_job_resumed_from_its_checkpoint_trains_the_rest_as_the_uninterrupted_job()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel, 2, 1);
        // Random windows: no hidden state carried across steps (a stream language model's is not gathered into the checkpoint).
        spec = spec with { Training = spec.Training with { LmSampling = LmSamplingKinds.Random } };
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var job = DatasetJob(spec, dataset);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap(), 2);

        var (whole, wholeLosses) = await RunAsync(cluster, tmp, job, "whole.json");
        Assert.True(whole.State == JobState.Succeeded, $"uninterrupted: {whole.State} {whole.Message}");
        var (first, firstLosses) = await RunAsync(cluster, tmp, job with { Training = job.Training with { MaxSteps = 6 } }, "first.json");
        Assert.True(first.State == JobState.Succeeded, $"first 6 steps: {first.State} {first.Message}");
        var (rest, restLosses) = await RunAsync(cluster, tmp, job, "rest.json", resumeFrom: first.JobId);
        Assert.True(rest.State == JobState.Succeeded, $"resumed: {rest.State} {rest.Message}");
        Assert.Equal(first.JobId, rest.ResumedFrom);
        Assert.Equal(6, rest.StartStep);
        Assert.Equal(Steps, rest.Step);
        AssertSameLosses(wholeLosses, [.. firstLosses, .. restLosses], "6 steps, then resumed from the checkpoint");
        Assert.True(Math.Abs(whole.LastEval.Loss - rest.LastEval.Loss) <= 1e-6 * Math.Max(1, whole.LastEval.Loss),
            $"validation loss {rest.LastEval.Loss:R}, uninterrupted {whole.LastEval.Loss:R}");
    }

    [Fact]
    public async Task A_dataset_pipeline_job_interrupted_by_a_coordinator_restart_continues_from_its_checkpoint_as_if_uninterrupted()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel, 2, 1);
        spec = spec with { Training = spec.Training with { LmSampling = LmSamplingKinds.Random, CheckpointInterval = 4 } };
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var job = DatasetJob(spec, dataset);
        // Step 7 (0-based 6) is held on one worker until the coordinator has gone: the job stops after its checkpoint at step 4.
        var hold = new StepHold(6);
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [tmp.Path] });
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<HoldStepInterceptor>(hold)));
        await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        try
        {
            hold.Enabled = false;
            var (whole, _) = await RunAsync(cluster, tmp, job, "whole.json");
            Assert.True(whole.State == JobState.Succeeded, $"uninterrupted: {whole.State} {whole.Message}");
            using var reference = Dtrain.Inference.TrainedModel.Load(cluster.CheckpointFile(whole));

            hold.Enabled = true;
            var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("held.json", JobSpecSerializer.Serialize(job))), 2)).JobId;
            await hold.Reached.Task.WaitAsync(TimeSpan.FromMinutes(2));
            Assert.Equal("ckpt-000000004.dtck", cluster.Client.Get(new GetJobRequest { JobId = id }).Checkpoint);
            await cluster.RestartCoordinatorAsync();
            hold.Release();
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"after the restart: {info.State} {info.Message}");
            Assert.Equal(Steps, info.Step);
            // It went on from its checkpoint at step 4 (steps 5-6 ran again).
            Assert.Equal(4, info.StartStep);
            using var trained = Dtrain.Inference.TrainedModel.Load(cluster.CheckpointFile(info));
            var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, trained.Engine.Parameters);
            Assert.True(relative <= 1e-6, $"restarted vs uninterrupted dataset pipeline: max |dp| / max |p| = {relative:E2}");
            Assert.True(Math.Abs(whole.LastEval.Loss - info.LastEval.Loss) <= 1e-6 * Math.Max(1, whole.LastEval.Loss),
                $"validation loss {info.LastEval.Loss:R}, uninterrupted {whole.LastEval.Loss:R}");
        }
        finally
        {
            hold.Release();
        }
    }

    /// <summary>Holds the first RunStep of step <see cref="Step"/> (while enabled) until <see cref="Release"/> or the call is cancelled.</summary>
    public sealed class StepHold(long step)
    {
        readonly CancellationTokenSource released = new();
        int taken;
        public long Step { get; } = step;
        public volatile bool Enabled = true;
        public TaskCompletionSource Reached { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public CancellationToken Released => released.Token;
        public bool Take() => Enabled && Interlocked.Exchange(ref taken, 1) == 0;
        public void Release() => released.Cancel();
    }

    internal sealed class HoldStepInterceptor(StepHold hold) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is RunStepRequest r && r.Step == hold.Step && hold.Take())
            {
                hold.Reached.TrySetResult();
                using var either = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, hold.Released);
                await Task.Delay(Timeout.Infinite, either.Token).ContinueWith(_ => { }, TaskScheduler.Default);
                throw new RpcException(new Status(StatusCode.Unavailable, "held by the test until the coordinator restarted"));
            }
            return await continuation(request, context);
        }
    }

    [Fact]
    public async Task A_missing_training_shard_fails_a_dataset_pipeline_job_naming_it_and_the_next_job_runs()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel, 2, 1);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var shard = Path.Combine(dataset, "train-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        File.Delete(shard);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap(), 2);
        var (info, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains("train-00000.tokens", info.Message);
        Assert.Contains(dataset, info.Message);
        // The stages are fine: the next job runs.
        File.WriteAllBytes(shard, bytes);
        var (again, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "again.json");
        Assert.True(again.State == JobState.Succeeded, $"{again.State} {again.Message}");
    }

    [Fact]
    public async Task A_training_shard_altered_in_place_fails_a_dataset_pipeline_job_naming_it()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel, 2, 1);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var shard = Path.Combine(dataset, "train-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        // Same size, every id still inside the vocabulary: the first id and the next different one swapped. Only the SHA-256 tells.
        var width = bytes.Length / System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dataset, DatasetLayout.ManifestFile)))!["train"]!["shards"]![0]!["token_count"]!.GetValue<int>();
        var other = Enumerable.Range(1, bytes.Length / width - 1).First(i => !bytes.AsSpan(i * width, width).SequenceEqual(bytes.AsSpan(0, width)));
        var head = bytes[..width];
        bytes.AsSpan(other * width, width).CopyTo(bytes);
        head.CopyTo(bytes, other * width);
        File.WriteAllBytes(shard, bytes);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap(), 2);
        var (info, losses) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.True(info.State == JobState.Failed, $"{info.State} {info.Message} after {losses.Length} steps");
        Assert.Contains($"dataset {dataset}: train-00000.tokens block 0 (bytes 0-{bytes.Length - 1}) does not match its SHA-256 in the manifest ({shard}: SHA-256 is ", info.Message);
        Assert.True(losses.Length < Steps, $"{losses.Length} steps ended");
    }

    [Fact]
    public async Task A_validation_id_outside_the_vocabulary_fails_the_coordinators_evaluation_naming_the_dataset_and_the_file()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel, 2, 1);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var shard = Path.Combine(dataset, "validation-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        // The first id becomes 255 (1-byte ids: a character vocabulary), and the manifest says so (size and SHA-256): a
        // dataset made elsewhere. libtorch would abort the coordinator's process on it; it must be refused before it reaches torch.
        bytes[0] = 0xFF;
        DatasetJobTests.Rewrite(dataset, "validation-00000.tokens", bytes);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap(), 2);
        var (info, losses) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"evaluation: dataset {dataset}: validation-00000.tokens: id 255 at token 0 outside the vocabulary", info.Message);
        // The first evaluation (after step 5) failed it.
        Assert.Equal(5, losses.Length);
    }
}
