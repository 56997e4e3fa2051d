using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Training;

/// <summary>A job too large for the memory is refused before anything is allocated, naming the fields and the estimate.</summary>
public class MemoryBudgetTests
{
    sealed class Recorder : ITrainingObserver
    {
        public List<StepReport> Steps { get; } = [];
        public void OnStep(StepReport report) => Steps.Add(report);
    }

    /// <summary>Every field at the validator's upper bound: "valid" field by field, ~20 PB to train.</summary>
    const string Absurd = """
        {"name": "absurd", "data": {"train": "t.txt"},
         "model": {"layers": 16, "hidden_size": 8192, "embedding_dim": 8192},
         "training": {"batch_size": 65536, "seq_len": 100000}}
        """;

    [Theory]
    [InlineData("validate")]
    [InlineData("train")]
    public void The_absurd_spec_is_refused_before_any_allocation_with_exit_2_naming_fields_and_estimate(string verb)
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = tmp.Write("absurd.json", Absurd);
        // The default budget is the memory available now; no machine has the ~2e16 bytes this needs.
        var r = CliRunner.Run(tmp.Path, verb, spec);
        Assert.True(r.ExitCode == 2, r.ToString());
        foreach (var expected in new[] { "$.model", "training needs about", "MB", "model.layers 16", "model.hidden_size 8192", "model.embedding_dim 8192", "training.batch_size 65536", "training.seq_len 100000", "available memory", "--memory-budget" })
            Assert.Contains(expected, r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
        // Refused before the output directory, the data or a model were touched.
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "runs")));
        Assert.DoesNotContain("parameters, vocabulary", r.Stdout);
    }

    [Fact]
    public async Task The_coordinator_refuses_at_submit_a_job_no_registered_worker_can_hold()
    {
        await using var cluster = await Dtrain.Tests.Cluster.InProcessCluster.StartAsync(1);
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var worker = cluster.Client.ListWorkers(new Dtrain.Protos.Jobs.ListWorkersRequest()).Workers.Single();
        var e = Assert.Throws<Grpc.Core.RpcException>(() =>
            cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("absurd.json", Absurd)), 1)));
        Assert.Equal(Grpc.Core.StatusCode.InvalidArgument, e.StatusCode);
        foreach (var expected in new[] { "$.model", "training needs about", "model.layers 16", "training.batch_size 65536", $"the memory of the largest worker, {worker.WorkerId}", "add workers with more memory" })
            Assert.Contains(expected, e.Status.Detail);
        Assert.Empty(cluster.Client.List(new Dtrain.Protos.Jobs.ListJobsRequest()).Jobs);

        // A job that fits is still accepted, with its batch shared by the workers it asks for.
        var ok = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("ok.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2)))), 1));
        Assert.Equal(Dtrain.Protos.Jobs.JobState.Succeeded, (await cluster.WaitAsync(ok.JobId, TimeSpan.FromMinutes(2))).State);
    }

    [Fact]
    public void An_explicit_budget_refuses_a_small_job_and_0_turns_the_check_off()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = tmp.Write("lm.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2) with { Output = "out" }));
        var refused = CliRunner.Run(tmp.Path, "train", spec, "--memory-budget", "0.1");
        Assert.True(refused.ExitCode == 2, refused.ToString());
        Assert.Contains("over the memory budget of 0.1 MB (--memory-budget)", refused.Stderr);
        Assert.Contains("$.model", refused.Stderr);
        Assert.Contains("valid", CliRunner.Run(tmp.Path, "validate", spec, "--memory-budget", "0").Stderr);
        var ok = CliRunner.Run(tmp.Path, "train", spec, "--memory-budget", "0");
        Assert.True(ok.ExitCode == 0, ok.ToString());
        var negative = CliRunner.Run(tmp.Path, "validate", spec, "--memory-budget", "-5");
        Assert.Equal(2, negative.ExitCode);
        Assert.Contains("--memory-budget -5 must be a number of MB >= 0", negative.Stderr);
    }

    [Fact]
    public void The_check_after_reading_the_data_counts_the_real_vocabulary()
    {
        // A word language model: tiny with the smallest vocabulary, but 3,000 distinct words make its embedding,
        // head and logits large. The spec-only check passes; the one after tokenizing refuses, before the model is built.
        using var tmp = new TempDir();
        tmp.Write("w.txt", string.Join(' ', Enumerable.Range(0, 3000).Select(i => $"w{i}")));
        var baseSpec = TestJobs.CharLm("w.txt", steps: 2);
        var spec = baseSpec with
        {
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word },
            Model = baseSpec.Model with { EmbeddingDim = 256, HiddenSize = 64, Layers = 1 },
            Training = baseSpec.Training with { BatchSize = 64, SeqLen = 8 },
        };
        // The tokenizer is fitted on the training part (90% of the text): at least 1,000 of the words.
        var lower = TrainingMemory.Estimate(spec, TrainingMemory.MinimumVocabulary, TrainingMemory.MinimumVocabulary, 64).Total;
        var budget = new MemoryBudget(lower * 2, "test budget");
        Assert.True(TrainingMemory.Estimate(spec, 1000, 1000, 64).Total > budget.Bytes);

        var rec = new Recorder();
        var e = Assert.Throws<SpecException>(() => Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = tmp.Path, MemoryBudget = budget, Source = "w.json" }, rec, CancellationToken.None));
        Assert.Equal("w.json", e.SpecSource);
        Assert.Contains("with a vocabulary of ", e.Message);
        Assert.Contains("test budget", e.Message);
        Assert.Empty(rec.Steps);
        Assert.Empty(Directory.GetFiles(Path.Combine(tmp.Path, "checkpoints")));
    }

    /// <summary>A word language model over 3,000 distinct words, or a classifier of 3,000 labels: small by the spec, large by its data.</summary>
    static (JobSpec Spec, string File) DataSizedJob(TempDir tmp, string kind)
    {
        if (kind == "vocabulary")
        {
            var lm = TestJobs.CharLm(tmp.Write("w.txt", string.Join(' ', Enumerable.Range(0, 3000).Select(i => $"w{i}"))), steps: 2);
            return (lm with
            {
                Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word },
                Model = lm.Model with { EmbeddingDim = 256, HiddenSize = 64, Layers = 1 },
                Training = lm.Training with { BatchSize = 64, SeqLen = 8 },
            }, "w.txt");
        }
        var lines = Enumerable.Range(0, 3000).Select(i => $"{{\"text\": \"item {i}\", \"label\": \"label-{i}\"}}");
        var clf = TestJobs.Classifier(tmp.Write("l.jsonl", string.Join('\n', lines) + "\n"), steps: 2);
        return (clf with { Model = clf.Model with { HiddenSize = 256 }, Data = clf.Data with { MaxLength = 4 } }, "l.jsonl");
    }

    [Theory]
    [InlineData("vocabulary")]
    [InlineData("labels")]
    public async Task A_job_that_passes_submit_is_refused_after_its_data_is_prepared_against_its_workers_memory(string kind)
    {
        using var tmp = new TempDir();
        var (spec, _) = DataSizedJob(tmp, kind);
        var prepared = PreparedData.Load(spec, tmp.Path);
        var outputs = spec.Task == TaskKinds.LanguageModel ? prepared.Tokenizer.VocabSize : prepared.Labels.Count;
        var atSubmit = TrainingMemory.Estimate(spec, TrainingMemory.MinimumVocabulary, spec.Task == TaskKinds.LanguageModel ? TrainingMemory.MinimumVocabulary : 2, spec.Training.BatchSize).Total;
        int? longest = spec.Task == TaskKinds.LanguageModel ? null : prepared.TrainSequences.Concat(prepared.ValidationSequences).Max(x => x.Length);
        var real = TrainingMemory.Estimate(spec, prepared.Tokenizer.VocabSize, outputs, spec.Training.BatchSize, longest).Total;
        Assert.True(real > 2 * atSubmit, $"{real} vs {atSubmit}");
        // The worker reports its budget (less than its memory) at registration: between the two estimates.
        await using var cluster = await Dtrain.Tests.Cluster.InProcessCluster.StartAsync(0);
        await cluster.AddWorkerAsync(new Dtrain.Worker.WorkerOptions { MemoryBudgetMb = (atSubmit + real) / 2 / 1e6 });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        var worker = cluster.Client.ListWorkers(new Dtrain.Protos.Jobs.ListWorkersRequest()).Workers.Single();

        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("job.json", JobSpecSerializer.Serialize(spec))), 1)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.Equal(Dtrain.Protos.Jobs.JobState.Failed, info.State);
        Assert.Equal(0, info.Step);
        foreach (var expected in new[] { "after preparing the data", "training needs about", $"{PipelinePlan.Mb(real)} MB", "model.hidden_size", "training.batch_size",
                     $"with a vocabulary of {prepared.Tokenizer.VocabSize:N0} tokens (tokenizer)", $"what worker {worker.WorkerId} reports" })
            Assert.Contains(expected, info.Message);
        if (kind == "labels") Assert.Contains($"and {prepared.Labels.Count:N0} labels (in the data)", info.Message);
        // The coordinator refused it before any worker was assigned (a worker's own refusal names Worker:MemoryBudgetMb).
        Assert.DoesNotContain("Worker:MemoryBudgetMb", info.Message);
    }

    [Fact]
    public async Task A_worker_refuses_by_default_an_assignment_over_the_memory_available()
    {
        // Straight to a worker with its default options (no --memory-budget): 16 layers of 8192 need ~140 GB for the
        // weights alone, more than any machine this runs on has available. Without the default check it would start allocating.
        await using var cluster = await Dtrain.Tests.Cluster.InProcessCluster.StartAsync(1);
        var worker = cluster.Client.ListWorkers(new Dtrain.Protos.Jobs.ListWorkersRequest()).Workers.Single();
        var spec = TestJobs.CharLm("unused.txt") with { Model = new ModelSpec { Layers = 16, HiddenSize = 8192, EmbeddingDim = 64 } };
        var request = new Dtrain.Protos.Worker.AssignRequest { JobId = "j", Generation = 1, WorldSize = 1, SpecJson = JobSpecSerializer.Serialize(spec), TokenizerKind = "char" };
        request.Peers.Add(new Dtrain.Protos.Worker.Peer { Rank = 0, Address = worker.Address });
        request.TokenizerTokens.AddRange(["<pad>", "<unk>", "a", "b", "c"]);
        using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(worker.Address);
        var e = Assert.Throws<Grpc.Core.RpcException>(() => new Dtrain.Protos.Worker.WorkerControl.WorkerControlClient(channel).Assign(request));
        Assert.Equal(Grpc.Core.StatusCode.ResourceExhausted, e.StatusCode);
        foreach (var expected in new[] { "the whole model needs about", "model.layers 16 × model.hidden_size 8192", "with a vocabulary of 5 tokens (tokenizer)", "training.batch_size 4",
                     "over this worker's budget of", "available memory", "Worker:MemoryBudgetMb" })
            Assert.Contains(expected, e.Status.Detail);
        // ... and keeps serving: a job that fits runs on it.
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var ok = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("ok.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2)))), 1));
        Assert.Equal(Dtrain.Protos.Jobs.JobState.Succeeded, (await cluster.WaitAsync(ok.JobId, TimeSpan.FromMinutes(2))).State);
    }

    [Fact]
    public void The_estimate_is_the_pipeline_planners_for_a_single_stage()
    {
        foreach (var (task, cell) in new[] { (TaskKinds.LanguageModel, CellKinds.Lstm), (TaskKinds.Classification, CellKinds.Gru) })
        {
            var spec = new JobSpec
            {
                Task = task,
                Data = new DataSpec { Format = DataFormats.Jsonl, Train = "x", MaxLength = 300 },
                Model = new ModelSpec { Cell = cell, Layers = 3, HiddenSize = 64, EmbeddingDim = 32, Bidirectional = task == TaskKinds.Classification },
                Training = new TrainingSpec { BatchSize = 16, SeqLen = 40 },
            };
            const int vocab = 50, classes = 4;
            var outputs = task == TaskKinds.LanguageModel ? vocab : classes;
            var planned = PipelinePlan.Create(spec, 1, vocab, outputs).Memory.Single();
            Assert.Equal(planned, TrainingMemory.Estimate(spec, vocab, outputs, 16));
            // Weights, gradients and Adam's two moments: 4 copies of every float32 parameter.
            Assert.Equal(16 * ModelLayout.Of(spec.Model, vocab, outputs).Total, planned.Weights + planned.Gradients + planned.OptimizerState);
        }
    }

    [Fact]
    public void Available_memory_is_positive_and_no_more_than_the_machine_has()
    {
        var available = MemoryBudget.Available();
        Assert.True(available.Bytes > 0);
        Assert.True(available.Bytes <= GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
        Assert.StartsWith("available memory: ", available.Source);
    }
}
