using System.Text.Json;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// The sample ledger of a pipeline job (D replicas × K stages) on a real coordinator and real workers over gRPC on
/// loopback: every committed step once, its global batch's rows split among the replicas (each named by its stages'
/// workers joined with '+') without gap or overlap, every sample once per epoch — in <c>ledger.jsonl</c> and the Ledger
/// RPC — also when the job is resumed from another job's checkpoint and when the coordinator restarts mid-job.
/// </summary>
public sealed class PipelineLedgerTests
{
    const int Steps = 10;

    /// <summary>A 2 × 2 pipeline job: a character language model (8-row batches) or a classifier (72 training examples, batch 10: an epoch is 8 steps, its last of 2 rows).</summary>
    static (JobSpec Spec, string File) Job(TempDir tmp, string task, int checkpointInterval = 0)
    {
        // The classifier's 5 rows per replica are 1 micro-batch; the language model's 4, 2.
        var parallelism = new ParallelismSpec { Data = 2, Pipeline = new PipelineSpec { Stages = 2, Microbatches = task == TaskKinds.LanguageModel ? 2 : 1, Schedule = "1f1b" } };
        if (task == TaskKinds.LanguageModel)
        {
            var file = tmp.Write("t.txt", TestJobs.Text(120));
            var lm = TestJobs.CharLm("t.txt", steps: Steps);
            return (lm with
            {
                Model = lm.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 16 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
                Training = lm.Training with { BatchSize = 8, SeqLen = 12, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = checkpointInterval },
                Parallelism = parallelism,
            }, file);
        }
        var jsonl = tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(90));
        var clf = TestJobs.Classifier("d.jsonl", steps: Steps);
        return (clf with
        {
            Model = clf.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 12 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = clf.Training with { BatchSize = 10, EvalInterval = 0, CheckpointInterval = checkpointInterval },
            Parallelism = parallelism,
        }, jsonl);
    }

    static string Submit(InProcessCluster cluster, TempDir tmp, JobSpec spec, string name, string? resumeFrom = null)
    {
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write(name, JobSpecSerializer.Serialize(spec))), 4);
        if (resumeFrom is not null) Dtrain.Cli.JobCommands.AddResume(cluster.Client, request, resumeFrom);
        return cluster.Client.Submit(request).JobId;
    }

    static IReadOnlyList<LedgerEntry> Ledger(InProcessCluster cluster, string id) =>
        ProtoMapper.FromProto(cluster.Client.Ledger(new GetJobRequest { JobId = id }));

    /// <summary>
    /// Steps <paramref name="from"/>..<paramref name="to"/> - 1 once each, their rows split without gap or overlap between
    /// 2 replicas of 2 stage workers: 4 workers in all, each once — the job's <paramref name="info"/> names them when given.
    /// </summary>
    static void AssertReplicaLedger(IReadOnlyList<LedgerEntry> ledger, JobInfo? info, long from, long to, int batch)
    {
        Assert.Empty(SampleLedger.Check(ledger, from, to));
        Assert.Equal(Enumerable.Range((int)from, (int)(to - from)).Select(i => (long)i), ledger.Select(s => s.Step));
        foreach (var s in ledger)
        {
            Assert.True(s.Rows > 0 && s.Rows <= batch, $"step {s.Step}: {s.Rows} rows in a batch of {batch}");
            Assert.Equal(2, s.Shares.Count);
            Assert.All(s.Shares, x => Assert.Equal(2, x.WorkerId.Split('+').Length));
            var ids = s.Shares.SelectMany(x => x.WorkerId.Split('+')).ToList();
            Assert.Equal(4, ids.Distinct().Count());
            if (info is not null) Assert.Equal(info.WorkerIds.Order(), ids.Order());
        }
    }

    [Theory]
    [InlineData(TaskKinds.LanguageModel)]
    [InlineData(TaskKinds.Classification)]
    public async Task A_2x2_pipeline_jobs_ledger_has_every_step_once_its_rows_split_between_the_replicas_and_every_sample_once_per_epoch(string task)
    {
        using var tmp = new TempDir();
        var (spec, _) = Job(tmp, task);
        await using var cluster = await InProcessCluster.StartAsync(4);
        var id = Submit(cluster, tmp, spec, "pipe.json");
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(Steps, info.Step);

        var ledger = Ledger(cluster, id);
        AssertReplicaLedger(ledger, info, 0, Steps, spec.Training.BatchSize);
        if (task == TaskKinds.LanguageModel)
            Assert.All(ledger, s => Assert.Equal([4, 4], s.Shares.Select(x => x.Rows)));
        else
        {
            // Epoch 1: steps 1-8 in their places, the 72 training examples once each (the last batch's 2 rows: one per replica); epoch 2 begins at step 9.
            var epoch = ledger.Where(s => s.Epoch == 0).ToList();
            Assert.Equal(Enumerable.Range(0, 8).Select(i => (long)i), epoch.Select(s => s.StepInEpoch));
            Assert.Equal(72, epoch.Sum(s => s.Rows));
            Assert.Equal([1, 1], epoch[^1].Shares.Select(x => x.Rows));
            Assert.Equal([(1L, 0L), (1L, 1L)], ledger.Where(s => s.Step >= 8).Select(s => (s.Epoch, s.StepInEpoch)));
        }

        // ledger.jsonl holds the same steps, one line each, in the form every reader of it knows.
        var lines = File.ReadAllLines(Path.Combine(cluster.DataDir, "jobs", id, "ledger.jsonl"));
        Assert.Equal(ledger, lines.Select(l => JsonSerializer.Deserialize(l, LedgerJson.Default.LedgerEntry)!));

        // `dtrain status --ledger`: each replica's rows under its stages' workers, the 4 workers counted, no problem found.
        var status = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken }, "status", id, "--ledger", "--coordinator", cluster.Address);
        Assert.True(status.ExitCode == 0, status.ToString());
        var shares = ledger[0].Shares;
        var firstEpoch = ledger.Where(s => s.Epoch == 0).Max(s => s.Step) + 1;
        Assert.Contains($"steps 1-{firstEpoch} on 4 worker(s) ({shares[0].WorkerId} rows 0-{shares[0].Rows - 1}, {shares[1].WorkerId} rows {shares[0].Rows}-", status.Stdout, StringComparison.Ordinal);
        Assert.Contains($"every sample of steps 1-{Steps} seen exactly once", status.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_pipeline_job_resumed_from_another_jobs_checkpoint_has_the_rest_of_the_steps_in_its_ledger_once_each()
    {
        using var tmp = new TempDir();
        var (spec, _) = Job(tmp, TaskKinds.LanguageModel);
        await using var cluster = await InProcessCluster.StartAsync(4);
        var first = await cluster.WaitAsync(Submit(cluster, tmp, spec with { Training = spec.Training with { MaxSteps = 6 } }, "first.json"), TimeSpan.FromMinutes(3));
        Assert.True(first.State == JobState.Succeeded, $"first 6 steps: {first.State} {first.Message}");
        AssertReplicaLedger(Ledger(cluster, first.JobId), first, 0, 6, 8);

        var rest = await cluster.WaitAsync(Submit(cluster, tmp, spec, "rest.json", resumeFrom: first.JobId), TimeSpan.FromMinutes(3));
        Assert.True(rest.State == JobState.Succeeded, $"resumed: {rest.State} {rest.Message}");
        Assert.Equal(6, rest.StartStep);
        AssertReplicaLedger(Ledger(cluster, rest.JobId), rest, 6, Steps, 8);
    }

    [Fact]
    public async Task A_pipeline_job_interrupted_by_a_coordinator_restart_keeps_its_ledger_and_commits_every_step_once()
    {
        using var tmp = new TempDir();
        var (spec, _) = Job(tmp, TaskKinds.LanguageModel, checkpointInterval: 4);
        // Step 7 (0-based 6) is held on one worker until the coordinator has gone: the job stops after its checkpoint at step 4.
        var hold = new PipelineDatasetJobTests.StepHold(6);
        await using var cluster = await InProcessCluster.StartAsync(0);
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<PipelineDatasetJobTests.HoldStepInterceptor>(hold)));
        for (var i = 0; i < 3; i++) await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(4, TimeSpan.FromSeconds(30));
        try
        {
            var id = Submit(cluster, tmp, spec, "held.json");
            await hold.Reached.Task.WaitAsync(TimeSpan.FromMinutes(2));
            Assert.Equal("ckpt-000000004.dtck", cluster.Client.Get(new GetJobRequest { JobId = id }).Checkpoint);
            // Steps 1-6 committed before the stop (5 and 6 are trained again after it).
            AssertReplicaLedger(Ledger(cluster, id), cluster.Client.Get(new GetJobRequest { JobId = id }), 0, 6, 8);
            await cluster.RestartCoordinatorAsync();
            hold.Release();
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"after the restart: {info.State} {info.Message}");
            Assert.Equal(4, info.StartStep);
            Assert.Equal(Steps, info.Step);
            // Steps 1-4 from the store, 5-10 by the restarted run: each once.
            var ledger = Ledger(cluster, id);
            // (The workers may have registered again under new ids: each step names its workers of the time.)
            AssertReplicaLedger(ledger, null, 0, Steps, 8);
            // ledger.jsonl: the steps before the restart, the roll-back to the checkpoint, the steps after it.
            var lines = File.ReadAllLines(Path.Combine(cluster.DataDir, "jobs", id, "ledger.jsonl"));
            Assert.Contains("{\"rollbackTo\": 4}", lines);
        }
        finally
        {
            hold.Release();
        }
    }
}
