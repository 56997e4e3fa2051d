using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Data.Datasets;
using Dtrain.Tests.Data.Storage;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A job that names a prepared dataset (data.dataset) on a real cluster (coordinator and 2 workers over gRPC on
/// loopback): it trains exactly the batches of the same data held in memory — the same loss at every step and the same
/// final evaluation — while the coordinator sends only the plan (no token reaches a worker over the wire) and the
/// workers read the rows themselves, from a shared directory or from S3 (the real S3 test server).
/// </summary>
[Collection(DatasetJobCollection.Name)]
public sealed class DatasetJobTests
{
    public static TheoryData<string> Tasks() => [TaskKinds.LanguageModel, TaskKinds.Classification];

    /// <summary>The in-memory spec for <paramref name="task"/> and its data file (written into <paramref name="tmp"/>).</summary>
    internal static (JobSpec Spec, string File) MemoryJob(TempDir tmp, string task)
    {
        if (task == TaskKinds.LanguageModel)
        {
            var file = tmp.Write("t.txt", TestJobs.Text(80));
            var lm = TestJobs.CharLm("t.txt", steps: 12);
            return (lm with { Training = lm.Training with { BatchSize = 7, SeqLen = 12 } }, file);
        }
        var jsonl = tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(90));
        var clf = TestJobs.Classifier("d.jsonl", steps: 12);
        // 72 training examples, batch 10: the last batch of an epoch has 2 rows, so a rank has none then.
        return (clf with { Training = clf.Training with { BatchSize = 10 } }, jsonl);
    }

    /// <summary>`dtrain prepare` of <paramref name="file"/> with the spec's options, in small shards (rows cross them).</summary>
    internal static string Prepare(JobSpec spec, string file, string output)
    {
        DatasetPreparer.Prepare(PrepareTestSupport.Options(output, [file]) with
        {
            Task = spec.Task, ValidationFraction = spec.Data.ValidationFraction, Seed = spec.Training.Seed, Tokenizer = spec.Tokenizer,
        });
        return output;
    }

    internal static JobSpec DatasetJob(JobSpec memory, string dataset) => memory with { Data = new DataSpec { Dataset = dataset } };

    static async Task<(JobInfo Info, double[] Losses)> RunAsync(InProcessCluster cluster, TempDir tmp, JobSpec spec, string name)
    {
        var path = tmp.Write(name, JobSpecSerializer.Serialize(spec));
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        var losses = cluster.Client.History(new GetJobRequest { JobId = id }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step.Loss).ToArray();
        return (info, losses);
    }

    /// <summary>A coordinator with <paramref name="dataRoot"/> as its data root and <paramref name="workers"/> idle workers whose arrivals <paramref name="tap"/> records.</summary>
    internal static async Task<InProcessCluster> StartAsync(string dataRoot, ShardTap tap, int workers = 2)
    {
        var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [dataRoot] });
        for (var i = 0; i < workers; i++) await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap)));
        await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        return cluster;
    }

    static void AssertSameTraining(JobInfo memory, double[] memoryLosses, JobInfo dataset, double[] datasetLosses, string what)
    {
        Assert.True(memory.State == JobState.Succeeded, $"from memory: {memory.State} {memory.Message}");
        Assert.True(dataset.State == JobState.Succeeded, $"{what}: {dataset.State} {dataset.Message}");
        Assert.Equal(12, memoryLosses.Length);
        Assert.Equal(memoryLosses.Length, datasetLosses.Length);
        for (var i = 0; i < memoryLosses.Length; i++)
            Assert.True(Math.Abs(memoryLosses[i] - datasetLosses[i]) <= 1e-6 * Math.Max(1, Math.Abs(memoryLosses[i])),
                $"{what}, step {i + 1}: loss {datasetLosses[i]:R}, from memory {memoryLosses[i]:R}");
        // The final evaluation: rank 0 read the validation split from the dataset.
        Assert.True(Math.Abs(memory.LastEval.Loss - dataset.LastEval.Loss) <= 1e-6 * Math.Max(1, memory.LastEval.Loss),
            $"{what}: validation loss {dataset.LastEval.Loss:R}, from memory {memory.LastEval.Loss:R}");
    }

    [Theory]
    [MemberData(nameof(Tasks))]
    public async Task Two_workers_train_the_same_losses_from_a_prepared_dataset_as_from_memory_with_no_token_on_the_wire(string task)
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, task);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var tap = new ShardTap();
        await using var cluster = await StartAsync(tmp.Path, tap);

        var (memory, memoryLosses) = await RunAsync(cluster, tmp, spec, "memory.json");
        Assert.True(tap.Values > 0, "the tap sees the rows of a job from memory");
        tap.Reset();
        var (fromDataset, datasetLosses) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        AssertSameTraining(memory, memoryLosses, fromDataset, datasetLosses, "from the dataset");
        Assert.Equal(0, tap.Values);
        Assert.True(tap.PlannedSteps >= 12, $"{tap.PlannedSteps} planned steps reached the workers");
        // Every step says how long it waited for its rows (the slowest replica's): something, and less than the step.
        var steps = cluster.Client.History(new GetJobRequest { JobId = fromDataset.JobId }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step).ToList();
        Assert.All(steps, s => Assert.True(s.DataWaitMs > 0 && s.DataWaitMs < s.StepMs, $"step {s.Step}: data wait {s.DataWaitMs} ms of {s.StepMs} ms"));
        Assert.All(cluster.Client.History(new GetJobRequest { JobId = memory.JobId }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step), e => Assert.Equal(0, e.Step.DataWaitMs));
        Assert.True(tap.DatasetValidation >= 1, "rank 0 was told to evaluate on the dataset's validation split");
    }

    [Fact]
    public async Task A_dataset_job_is_refused_at_submit_naming_the_field_that_disagrees()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        void Refused(JobSpec bad, string field, string words)
        {
            var path = tmp.Write("bad.json", JobSpecSerializer.Serialize(bad));
            var e = Assert.ThrowsAny<Exception>(() => cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)));
            Assert.Contains(field, e.Message);
            Assert.Contains(words, e.Message);
        }
        Refused(DatasetJob(spec, dataset) with { Data = new DataSpec { Dataset = dataset, Train = "t.txt" } }, "$.data.train", "not read with data.dataset");
        Refused(DatasetJob(spec, dataset) with { Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word } }, "$.tokenizer.kind", "was prepared with \"char\"");
        Refused(DatasetJob(spec, dataset) with { Task = TaskKinds.Classification }, "$.task", "prepared for task \"language_model\"");
        Refused(DatasetJob(spec, Path.Combine(tmp.Path, "nothing-here")), "$.data.dataset", "nothing-here");
        Refused(DatasetJob(spec, "/etc"), "$.data.dataset", "not a directory under the coordinator's data roots");
    }

    [Fact]
    public async Task A_shard_truncated_under_a_job_fails_it_naming_the_shard_and_the_dataset()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var shard = Path.Combine(dataset, "train-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        // After preparation: the manifest (all the coordinator reads) still says the old size.
        File.WriteAllBytes(shard, bytes[..(bytes.Length / 2)]);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains("train-00000.tokens", info.Message);
        Assert.Contains(dataset, info.Message);
        // The workers are fine: the next job runs.
        File.WriteAllBytes(shard, bytes);
        var (again, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "again.json");
        Assert.True(again.State == JobState.Succeeded, $"{again.State} {again.Message}");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_shard_altered_in_place_under_a_job_fails_it_naming_the_shard_and_the_dataset(int version)
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        // Version 1 (no block hashes): the shard is checked whole; version 2: the block read (the shard's only one here).
        if (version == 1) PrepareTestSupport.AsVersion1(dataset);
        var shard = Path.Combine(dataset, "train-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        var width = bytes.Length / System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dataset, DatasetLayout.ManifestFile)))!["train"]!["shards"]![0]!["token_count"]!.GetValue<int>();
        // Same size, other bytes, every id still inside the vocabulary: two different ids swapped. Only the SHA-256 tells.
        var other = Enumerable.Range(1, bytes.Length / width - 1).First(i => !bytes.AsSpan(i * width, width).SequenceEqual(bytes.AsSpan(0, width)));
        var first = bytes[..width];
        bytes.AsSpan(other * width, width).CopyTo(bytes);
        first.CopyTo(bytes, other * width);
        File.WriteAllBytes(shard, bytes);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (info, losses) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        // The check runs beside the steps; the last step waits for it, so the job cannot end as if the data were fine.
        Assert.True(info.State == JobState.Failed, $"{info.State} {info.Message} after {losses.Length} steps");
        Assert.Contains(version == 1
            ? $"dataset {dataset}: train-00000.tokens does not match its SHA-256 in the manifest ({shard}: SHA-256 is "
            : $"dataset {dataset}: train-00000.tokens block 0 (bytes 0-{bytes.Length - 1}) does not match its SHA-256 in the manifest ({shard}: SHA-256 is ", info.Message);
        Assert.True(losses.Length < 12, $"{losses.Length} steps ended");
    }

    /// <summary>Rewrites file <paramref name="name"/> of <paramref name="dataset"/> and its size and SHA-256 in the manifest (<paramref name="edit"/>: more manifest edits), as a dataset made elsewhere could be.</summary>
    internal static void Rewrite(string dataset, string name, byte[] bytes, Action<System.Text.Json.Nodes.JsonObject>? edit = null)
    {
        var path = Path.Combine(dataset, DatasetLayout.ManifestFile);
        var manifest = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        File.WriteAllBytes(Path.Combine(dataset, name), bytes);
        foreach (var split in new[] { "train", "validation" })
            foreach (var shard in manifest[split]!["shards"]!.AsArray())
                foreach (var kind in new[] { "tokens", "offsets", "labels" })
                    if (shard![kind] is { } entry && (string?)entry["name"] == name)
                    {
                        entry["bytes"] = bytes.Length;
                        entry["sha256"] = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes));
                        if (entry["block_bytes"] is { } block) entry["block_sha256"] = PrepareTestSupport.BlockHashes(bytes, block.GetValue<int>());
                    }
        edit?.Invoke(manifest);
        File.WriteAllText(path, manifest.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
    }

    [Fact]
    public async Task A_validation_id_outside_the_vocabulary_fails_the_job_naming_the_dataset_and_the_file()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var shard = Path.Combine(dataset, "validation-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        // The first id becomes 255 (a character vocabulary's 1-byte ids): outside this one.
        Assert.Equal(DatasetLayout.Uint8, (string?)System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dataset, DatasetLayout.ManifestFile)))!["token_dtype"]);
        bytes[0] = 0xFF;
        Rewrite(dataset, "validation-00000.tokens", bytes);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"dataset {dataset}: validation-00000.tokens: id 255 at token 0 outside the vocabulary", info.Message);
    }

    [Theory]
    [InlineData("label")]
    [InlineData("empty")]
    public async Task A_classifier_validation_record_without_tokens_or_with_a_label_outside_the_set_fails_the_job_naming_the_dataset_and_the_file(string fault)
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.Classification);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var entry = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dataset, DatasetLayout.ManifestFile)))!["validation"]!["shards"]![0]!;
        string name, expected;
        if (fault == "label")
        {
            // Record 0's label becomes 99: the set has 2.
            name = (string)entry["labels"]!["name"]!;
            var labels = File.ReadAllBytes(Path.Combine(dataset, name));
            BitConverter.TryWriteBytes(labels.AsSpan(0, 4), 99);
            Rewrite(dataset, name, labels);
            expected = $"dataset {dataset}: {name}: validation record 0: label id 99 outside [0, 2)";
        }
        else
        {
            // Record 0 ends where it starts (its ids go to record 1): it has no tokens.
            name = (string)entry["offsets"]!["name"]!;
            var offsets = File.ReadAllBytes(Path.Combine(dataset, name));
            BitConverter.TryWriteBytes(offsets.AsSpan(8, 8), 0UL);
            Rewrite(dataset, name, offsets);
            expected = $"dataset {dataset}: {(string)entry["tokens"]!["name"]!}: validation record 0 has no tokens";
        }
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains(expected, info.Message);
    }

    [Fact]
    public async Task A_validation_id_outside_the_vocabulary_that_evaluation_does_not_read_is_not_read()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        // One batch: 7 streams of 12 tokens (+1) from the starts of 7 equal stretches of the split. Token 30 is read by
        // the third batch of stream 0, not the first.
        spec = spec with { Training = spec.Training with { EvalBatches = 1 } };
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var manifest = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dataset, DatasetLayout.ManifestFile)))!["validation"]!;
        Assert.True(manifest["tokens"]!.GetValue<long>() > 7 * 40, $"the validation split holds {manifest["tokens"]} tokens: too few for this test");
        long at = 30;
        var shard = manifest["shards"]!.AsArray().First(x =>
        {
            var count = x!["token_count"]!.GetValue<long>();
            if (at < count) return true;
            at -= count;
            return false;
        })!;
        var name = (string)shard["tokens"]!["name"]!;
        var bytes = File.ReadAllBytes(Path.Combine(dataset, name));
        var width = bytes.Length / shard["token_count"]!.GetValue<int>();
        // That id becomes 255 (1-byte ids: a character vocabulary), outside this one.
        Assert.Equal(1, width);
        bytes[at] = 0xFF;
        Rewrite(dataset, name, bytes);
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
        // Evaluating the whole split reads it, and fails naming it.
        var (whole, _) = await RunAsync(cluster, tmp, DatasetJob(spec with { Training = spec.Training with { EvalBatches = 0 } }, dataset), "whole.json");
        Assert.Equal(JobState.Failed, whole.State);
        Assert.Contains($"dataset {dataset}: {name}: id 255 at token {at} outside the vocabulary", whole.Message);
    }

    [Fact]
    public async Task A_validation_split_of_one_token_fails_the_job_naming_the_dataset_and_its_manifest()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var path = Path.Combine(dataset, DatasetLayout.ManifestFile);
        var width = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!["validation"]!["shards"]![0]!["tokens"]!["bytes"]!.GetValue<long>()
            / System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!["validation"]!["shards"]![0]!["token_count"]!.GetValue<long>();
        var one = File.ReadAllBytes(Path.Combine(dataset, "validation-00000.tokens"))[..(int)width];
        // A validation split of one token (dtrain prepare refuses to make one; a dataset made elsewhere may hold it).
        Rewrite(dataset, "validation-00000.tokens", one, m =>
        {
            var validation = m["validation"]!.AsObject();
            var first = validation["shards"]![0]!.DeepClone();
            first["token_count"] = 1;
            validation["shards"] = new System.Text.Json.Nodes.JsonArray(first);
            validation["tokens"] = 1;
        });
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, DatasetJob(spec, dataset), "dataset.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"dataset {dataset}: manifest.json: the validation split holds 1 token(s); a language model needs at least 2 to evaluate", info.Message);
    }

    [S3Fact]
    public async Task Two_workers_train_from_an_s3_dataset_the_same_losses_as_from_memory()
    {
        using var tmp = new TempDir();
        using var server = await S3TestServer.StartAsync(Path.Combine(tmp.Path, "s3"));
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var uri = $"s3://{server.Bucket}/datasets/lm";
        using (var upload = new S3DatasetStore(uri, server.Options(Path.Combine(tmp.Path, "upload-cache"))))
            await upload.UploadDirectoryAsync(dataset, [DatasetLayout.ManifestFile]);
        var environment = server.ClientEnvironment(Path.Combine(tmp.Path, "cache"));
        using (ProcessEnvironment.Set(environment))
        {
            var tap = new ShardTap();
            await using var cluster = await StartAsync(tmp.Path, tap);
            var (memory, memoryLosses) = await RunAsync(cluster, tmp, spec, "memory.json");
            tap.Reset();
            var (fromS3, s3Losses) = await RunAsync(cluster, tmp, DatasetJob(spec, uri), "s3.json");
            AssertSameTraining(memory, memoryLosses, fromS3, s3Losses, "from S3");
            Assert.Equal(0, tap.Values);
            await server.FlushLogAsync();
            Assert.True(server.Count("GET", "train-00000.tokens") >= 1, "the workers fetched the shards from S3");
        }
    }

    [S3Fact]
    public async Task A_dataset_job_from_s3_fetches_only_the_blocks_its_rows_touch_over_the_whole_job()
    {
        using var tmp = new TempDir();
        using var server = await S3TestServer.StartAsync(Path.Combine(tmp.Path, "s3"));
        // A corpus many times larger than the 6 steps of 4 random windows read: shards of 32 blocks of 256 bytes.
        const int block = 256;
        var file = tmp.Write("t.txt", TestJobs.Text(600));
        var lm = TestJobs.CharLm("t.txt", steps: 6);
        var spec = lm with { Training = lm.Training with { BatchSize = 4, SeqLen = 12 } };
        var dataset = Path.Combine(tmp.Path, "ds");
        DatasetPreparer.Prepare(PrepareTestSupport.Options(dataset, [file]) with
        {
            ValidationFraction = spec.Data.ValidationFraction, Seed = spec.Training.Seed, Tokenizer = spec.Tokenizer, ShardTokens = 4096, ChunkChars = 4096, BlockBytes = block,
        });
        var manifest = PreparedDataset.Open(dataset);
        var blocksOf = manifest.Manifest.Train.Shards.ToDictionary(s => s.Tokens.Name, s => s.Tokens.BlockSha256!.Count);
        manifest.Dispose();
        Assert.True(blocksOf.Count >= 4 && blocksOf.Values.Max() >= 16, string.Join(", ", blocksOf));
        var uri = $"s3://{server.Bucket}/datasets/lm";
        using (var upload = new S3DatasetStore(uri, server.Options(Path.Combine(tmp.Path, "upload-cache"))))
            await upload.UploadDirectoryAsync(dataset, [DatasetLayout.ManifestFile]);
        await server.FlushLogAsync();
        var before = server.Log.Count;
        var environment = server.ClientEnvironment(Path.Combine(tmp.Path, "cache"));
        using (ProcessEnvironment.Set(environment))
        {
            await using var cluster = await StartAsync(tmp.Path, new ShardTap());
            var (info, losses) = await RunAsync(cluster, tmp, DatasetJob(spec, uri), "s3.json");
            Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
            Assert.Equal(6, losses.Length);
        }
        // The job is over (its last step waited for every check): what was fetched from the training shards.
        await server.FlushLogAsync();
        var fetched = server.Log.Skip(before)
            .Select(l => System.Text.RegularExpressions.Regex.Match(l, @"^s3-server: GET /[^ ]*/(train-\d+\.tokens) range=bytes=(\d+)-(\d+)"))
            .Where(m => m.Success)
            .Select(m => (Name: m.Groups[1].Value, Start: long.Parse(m.Groups[2].Value), End: long.Parse(m.Groups[3].Value)))
            .ToList();
        Assert.NotEmpty(fetched);
        // Every GET is one block of the manifest's, and no block of a shard was fetched unless a row needed it: 6 steps
        // of 4 windows of 13 ids touch at most 2 blocks each (per worker), far fewer than the shards opened hold.
        Assert.All(fetched, f => Assert.True(f.Start % block == 0 && f.End - f.Start + 1 <= block, $"{f.Name} bytes {f.Start}-{f.End}"));
        var blocks = fetched.Select(f => (f.Name, f.Start / block)).ToHashSet();
        Assert.True(blocks.Count <= 2 * 6 * 4 * 2, $"{blocks.Count} blocks fetched: {string.Join(", ", blocks.Order())}");
        var opened = blocks.Select(b => b.Name).Distinct().Sum(n => blocksOf[n]);
        Assert.True(blocks.Count < opened / 2, $"{blocks.Count} blocks fetched of the {opened} of the shards read: {string.Join(", ", blocks.Order())}");
    }

    [S3Fact]
    public async Task A_job_trains_from_a_dataset_that_dtrain_prepare_uploaded_to_s3_the_same_losses_as_from_memory()
    {
        using var tmp = new TempDir();
        using var server = await S3TestServer.StartAsync(Path.Combine(tmp.Path, "s3"));
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var uri = $"s3://{server.Bucket}/prepared/lm";
        var environment = server.ClientEnvironment(Path.Combine(tmp.Path, "cache"));
        // The spec's options, given to the CLI as a user would; small shards so that rows cross them.
        var prepared = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), environment, "prepare", file, "-o", uri, "--shard-tokens", "97",
            "--validation-fraction", spec.Data.ValidationFraction.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--seed", spec.Training.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(prepared.ExitCode == 0, prepared.ToString());
        using (ProcessEnvironment.Set(environment))
        {
            await using var cluster = await StartAsync(tmp.Path, new ShardTap());
            var (memory, memoryLosses) = await RunAsync(cluster, tmp, spec, "memory.json");
            var (fromS3, s3Losses) = await RunAsync(cluster, tmp, DatasetJob(spec, uri), "s3.json");
            AssertSameTraining(memory, memoryLosses, fromS3, s3Losses, "from the dataset dtrain prepare uploaded");
        }
    }

    [Fact]
    public async Task An_s3_dataset_job_is_refused_at_submit_naming_the_missing_endpoint_when_the_coordinator_has_no_s3_settings()
    {
        using var tmp = new TempDir();
        var (spec, _) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var environment = new Dictionary<string, string?>
        {
            ["DTRAIN_S3_ENDPOINT"] = null, ["AWS_ENDPOINT_URL_S3"] = null, ["AWS_ENDPOINT_URL"] = null, ["AWS_REGION"] = null, ["AWS_DEFAULT_REGION"] = null,
            ["AWS_PROFILE"] = null, ["AWS_CONFIG_FILE"] = Path.Combine(tmp.Path, "no-aws-config"), ["AWS_SHARED_CREDENTIALS_FILE"] = Path.Combine(tmp.Path, "no-aws-credentials"),
            ["AWS_EC2_METADATA_DISABLED"] = "true", ["DTRAIN_S3_CACHE_DIR"] = Path.Combine(tmp.Path, "cache"),
        };
        using (ProcessEnvironment.Set(environment))
        {
            await using var cluster = await StartAsync(tmp.Path, new ShardTap());
            var path = tmp.Write("s3.json", JobSpecSerializer.Serialize(DatasetJob(spec, "s3://some-bucket/lm")));
            var e = Assert.ThrowsAny<Exception>(() => cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)));
            Assert.Contains("$.data.dataset", e.Message);
            Assert.Contains("no S3 endpoint or region: set DTRAIN_S3_ENDPOINT", e.Message);
            Assert.DoesNotContain("Internal", e.Message);
        }
    }

    [Fact]
    public async Task A_worker_joining_a_dataset_job_mid_way_reads_its_own_rows_and_the_ledger_has_every_sample_once()
    {
        using var tmp = new TempDir();
        var (spec, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        const int Steps = 60;
        spec = spec with { Training = spec.Training with { MaxSteps = Steps, BatchSize = 12, LmSampling = LmSamplingKinds.Random } };
        var dataset = Prepare(spec, file, Path.Combine(tmp.Path, "ds"));
        var tap = new ShardTap();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [tmp.Path] });
        // The first worker holds step 30 until the joiner is registered, so the job cannot end before it may join.
        var joinerRegistered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o =>
        {
            o.Interceptors.Add<ShardTapInterceptor>(tap);
            o.Interceptors.Add<GatedStep>(30L, joinerRegistered.Task);
        }));
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap)));
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("elastic.json", JobSpecSerializer.Serialize(DatasetJob(spec, dataset)))), 2);
        request.MaxWorkers = 3;
        var id = cluster.Client.Submit(request).JobId;
        var until = DateTime.UtcNow.AddSeconds(120);
        while (cluster.Client.Get(new GetJobRequest { JobId = id }) is { Step: < 20 } seen)
        {
            Assert.True(seen.State is JobState.Queued or JobState.Preparing or JobState.Running && DateTime.UtcNow < until, $"job {id}: {seen.State} {seen.Message} at step {seen.Step}");
            await Task.Delay(20);
        }
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap)));
        while (cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Count(w => w.State is WorkerState.Idle or WorkerState.Training) < 3)
        {
            Assert.True(DateTime.UtcNow < until, "the joiner did not register");
            await Task.Delay(20);
        }
        joinerRegistered.SetResult();
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(3, info.WorkerIds.Count);
        Assert.True(info.Generation >= 2);
        var problems = SampleLedger.Check(ProtoMapper.FromProto(cluster.Client.Ledger(new GetJobRequest { JobId = id })), 0, Steps);
        Assert.True(problems.Count == 0, string.Join("; ", problems.Take(10)));
        Assert.Equal(0, tap.Values);
    }

    [Fact]
    public async Task A_dataset_job_resumed_from_its_checkpoint_trains_the_steps_an_uninterrupted_one_does()
    {
        using var tmp = new TempDir();
        var (memory, file) = MemoryJob(tmp, TaskKinds.LanguageModel);
        var dataset = Prepare(memory, file, Path.Combine(tmp.Path, "ds"));
        var spec = DatasetJob(memory, dataset);
        spec = spec with { Training = spec.Training with { MaxSteps = 18, CheckpointInterval = 6, LmSampling = LmSamplingKinds.Random } };
        await using var cluster = await StartAsync(tmp.Path, new ShardTap());
        var (whole, wholeLosses) = await RunAsync(cluster, tmp, spec, "whole.json");
        Assert.True(whole.State == JobState.Succeeded, $"{whole.State} {whole.Message}");

        var (first, _) = await RunAsync(cluster, tmp, spec with { Training = spec.Training with { MaxSteps = 12 } }, "first.json");
        Assert.True(first.State == JobState.Succeeded, $"{first.State} {first.Message}");
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("resume.json", JobSpecSerializer.Serialize(spec))), 2);
        request.ResumeJob = first.JobId;
        var id = cluster.Client.Submit(request).JobId;
        var resumed = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(resumed.State == JobState.Succeeded, $"{resumed.State} {resumed.Message}");
        Assert.Equal(12, resumed.StartStep);
        var losses = cluster.Client.History(new GetJobRequest { JobId = id }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step.Loss).ToArray();
        Assert.Equal(6, losses.Length);
        for (var i = 0; i < 6; i++)
            Assert.True(Math.Abs(losses[i] - wholeLosses[12 + i]) <= 1e-5 * Math.Max(1, wholeLosses[12 + i]), $"step {13 + i}: resumed {losses[i]:R}, uninterrupted {wholeLosses[12 + i]:R}");
    }

    /// <summary>Holds RunStep of step <paramref name="at"/> (0-based) until <paramref name="open"/> completes; other calls run on.</summary>
    sealed class GatedStep(long at, Task open) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is RunStepRequest step && step.Step == at)
                await open.WaitAsync(context.CancellationToken);
            return await continuation(request, context);
        }
    }
}

/// <summary>The dataset job tests set S3 variables of the process for the in-process coordinator and workers: they run alone.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DatasetJobCollection
{
    public const string Name = "dataset jobs";
}
