using Dtrain.Data.Datasets;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// With Coordinator:SharedDataDir, a job's uploaded files are prepared by the coordinator into a dataset in
/// SharedDataDir/JOB, and the job trains from it as a dataset job, on a real cluster (coordinator and 2 workers over
/// gRPC on loopback): the same losses as the same upload read into memory, no token on the wire, an upload over the
/// in-memory limit accepted, bad data failing the job naming the file and line, and what an interrupted preparation left
/// never used.
/// </summary>
[Collection(DatasetJobCollection.Name)]
public sealed class PreparedUploadTests
{
    public static TheoryData<string> Tasks() => [TaskKinds.LanguageModel, TaskKinds.Classification];

    /// <summary>The spec for <paramref name="task"/> with its data file written into <paramref name="tmp"/> (DatasetJobTests').</summary>
    static JobSpec Job(TempDir tmp, string task) => DatasetJobTests.MemoryJob(tmp, task).Spec;

    static async Task<InProcessCluster> StartAsync(CoordinatorOptions options, ShardTap tap, int workers = 2)
    {
        var cluster = await InProcessCluster.StartAsync(0, options);
        for (var i = 0; i < workers; i++) await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap)));
        if (workers > 0) await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        return cluster;
    }

    /// <summary>
    /// The spec's job on a cluster without a shared data directory (the reference run): it succeeds, its rows travel to
    /// the workers and no assignment names a dataset.
    /// </summary>
    static async Task<(JobInfo Info, double[] Losses)> RunInMemoryAsync(TempDir tmp, JobSpec spec)
    {
        var tap = new ShardTap();
        JobInfo memory;
        double[] losses;
        await using (var cluster = await StartAsync(new CoordinatorOptions(), tap))
            (memory, losses) = await RunAsync(cluster, tmp, spec, "memory.json");
        Assert.True(memory.State == JobState.Succeeded, $"from memory: {memory.State} {memory.Message}");
        Assert.True(tap.Values > 0, "without a shared data directory the rows travel to the workers");
        Assert.All(tap.Datasets, d => Assert.Equal("", d));
        return (memory, losses);
    }

    /// <summary>Submits the spec as `dtrain submit` does (its data files uploaded).</summary>
    static string Submit(InProcessCluster cluster, TempDir tmp, JobSpec spec, string name)
    {
        var path = tmp.Write(name, JobSpecSerializer.Serialize(spec));
        return cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
    }

    static async Task<(JobInfo Info, double[] Losses)> RunAsync(InProcessCluster cluster, TempDir tmp, JobSpec spec, string name)
    {
        var id = Submit(cluster, tmp, spec, name);
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        return (info, Losses(cluster, id));
    }

    static double[] Losses(InProcessCluster cluster, string id) =>
        cluster.Client.History(new GetJobRequest { JobId = id }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step.Loss).ToArray();

    static void AssertSameLosses(double[] expected, double[] actual, JobInfo expectedInfo, JobInfo actualInfo)
    {
        Assert.Equal(12, expected.Length);
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-6 * Math.Max(1, Math.Abs(expected[i])), $"step {i + 1}: loss {actual[i]:R}, from memory {expected[i]:R}");
        Assert.True(Math.Abs(expectedInfo.LastEval.Loss - actualInfo.LastEval.Loss) <= 1e-6 * Math.Max(1, expectedInfo.LastEval.Loss),
            $"validation loss {actualInfo.LastEval.Loss:R}, from memory {expectedInfo.LastEval.Loss:R}");
    }

    [Theory]
    [MemberData(nameof(Tasks))]
    public async Task An_uploaded_file_is_prepared_into_a_dataset_the_workers_read_with_the_losses_of_memory(string task)
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, task);

        var (memory, memoryLosses) = await RunInMemoryAsync(tmp, spec);

        var shared = Path.Combine(tmp.Path, "shared");
        var tap = new ShardTap();
        await using (var cluster = await StartAsync(new CoordinatorOptions { SharedDataDir = shared }, tap))
        {
            var (prepared, losses) = await RunAsync(cluster, tmp, spec, "prepared.json");
            Assert.True(prepared.State == JobState.Succeeded, $"prepared: {prepared.State} {prepared.Message}");
            AssertSameLosses(memoryLosses, losses, memory, prepared);
            var dataset = Path.Combine(shared, prepared.JobId);
            Assert.True(File.Exists(Path.Combine(dataset, DatasetLayout.ManifestFile)), $"{dataset} holds a whole dataset");
            // The workers were given the dataset and read their rows themselves: no token went over the wire.
            Assert.NotEmpty(tap.Datasets);
            Assert.All(tap.Datasets, d => Assert.Equal(dataset, d));
            Assert.Equal(0, tap.Values);
            // Its files count towards the owner's storage (measured on the scheduling loop once the job ended).
            var job = cluster.CoordinatorService<JobManager>().Get(prepared.JobId);
            var expected = JobStorage.BytesUnder(job.Dir) + JobStorage.BytesUnder(dataset);
            Assert.True(JobStorage.BytesUnder(dataset) > 0);
            await Until(() => job.StoredBytes == expected, TimeSpan.FromSeconds(30), () => $"{job.StoredBytes} bytes counted, {expected} stored");
        }
    }

    static async Task Until(Func<bool> done, TimeSpan timeout, Func<string> what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!done())
        {
            Assert.True(DateTime.UtcNow < deadline, what());
            await Task.Delay(50);
        }
    }

    [Fact]
    public void The_shared_data_dir_and_the_upload_limit_are_validated_naming_the_key()
    {
        using var tmp = new TempDir();
        var dataDir = Directory.CreateDirectory(Path.Combine(tmp.Path, "coordinator")).FullName;
        var shared = Path.Combine(tmp.Path, "shared");
        Assert.Contains(new CoordinatorOptions { DataDir = dataDir, SharedDataDir = "relative" }.Validate(), e => e.Contains("Coordinator:SharedDataDir: \"relative\" must be an absolute path", StringComparison.Ordinal));
        Assert.Contains(new CoordinatorOptions { DataDir = dataDir, SharedDataDir = Path.Combine(dataDir, "shared") }.Validate(), e => e.Contains("overlaps the data directory", StringComparison.Ordinal));
        // Prepared into a dataset, an upload may be larger than the in-memory limit, up to the pending-upload quota.
        Assert.Empty(new CoordinatorOptions { DataDir = dataDir, SharedDataDir = shared, MaxUploadBytes = 3L << 30 }.Validate());
        Assert.Equal(4L << 30, new CoordinatorOptions { DataDir = dataDir, SharedDataDir = shared }.UploadLimit);
        Assert.Contains(new CoordinatorOptions { DataDir = dataDir, SharedDataDir = shared, MaxUploadBytes = 5L << 30 }.Validate(), e => e.Contains("Coordinator:MaxUploadBytes", StringComparison.Ordinal));
        // Read into memory, it may not.
        Assert.Equal(1L << 30, new CoordinatorOptions { DataDir = dataDir }.UploadLimit);
        Assert.Contains(new CoordinatorOptions { DataDir = dataDir, MaxUploadBytes = 3L << 30 }.Validate(), e => e.Contains("Coordinator:MaxUploadBytes", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_file_sent_inline_is_prepared_too()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.Classification);
        var shared = Path.Combine(tmp.Path, "shared");
        var tap = new ShardTap();
        await using var cluster = await StartAsync(new CoordinatorOptions { SharedDataDir = shared }, tap);
        var request = new SubmitRequest { SpecJson = JobSpecSerializer.Serialize(spec), Workers = 2, Source = "inline.json" };
        request.Files["d.jsonl"] = Google.Protobuf.ByteString.CopyFrom(File.ReadAllBytes(Path.Combine(tmp.Path, "d.jsonl")));
        var id = cluster.Client.Submit(request).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
        Assert.All(tap.Datasets, d => Assert.Equal(Path.Combine(shared, id), d));
        Assert.NotEmpty(tap.Datasets);
        Assert.Equal(0, tap.Values);
    }

    [Fact]
    public async Task The_dataset_goes_with_the_job_data_after_the_retention()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.LanguageModel);
        var shared = Path.Combine(tmp.Path, "shared");
        await using var cluster = await StartAsync(new CoordinatorOptions { SharedDataDir = shared, JobDataRetentionMinutes = 0 }, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, spec, "job.json");
        Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
        var job = cluster.CoordinatorService<JobManager>().Get(info.JobId);
        // The data files and the dataset go in one pass of the scheduling loop, one after the other: wait for both.
        await Until(() => !Directory.Exists(Path.Combine(job.Dir, "data")) && !Directory.Exists(Path.Combine(shared, info.JobId)), TimeSpan.FromSeconds(60),
            () => Directory.Exists(Path.Combine(job.Dir, "data")) ? "the job's data files are still there" : "the dataset did not go with the job's data files");
    }

    [Fact]
    public async Task A_dataset_that_cannot_be_written_fails_the_job_saying_so()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.LanguageModel);
        var shared = Path.Combine(tmp.Path, "shared");
        await using var cluster = await StartAsync(new CoordinatorOptions { SharedDataDir = shared }, new ShardTap());
        // The shared directory became a file (as a full disk, the dataset's files cannot be written).
        File.WriteAllText(shared, "not a directory");
        var (info, _) = await RunAsync(cluster, tmp, spec, "job.json");
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"preparing the job's data into the dataset {Path.Combine(shared, info.JobId)} failed", info.Message);
        Assert.Contains("nothing of it is used", info.Message);
    }

    [Fact]
    public async Task An_upload_over_the_in_memory_limit_is_prepared_rather_than_refused()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.LanguageModel);
        var size = new FileInfo(Path.Combine(tmp.Path, "t.txt")).Length;
        Assert.True(size > 2048, $"the file is {size} bytes");
        var limits = new CoordinatorOptions { MaxDataFileBytes = 2048, MaxPendingUploadBytes = 1 << 20 };

        // Read into memory, it is refused by the in-memory limit (as an upload: MaxUploadBytes follows MaxDataFileBytes).
        await using (var cluster = await StartAsync(limits, new ShardTap(), workers: 0))
        {
            var e = Assert.ThrowsAny<Exception>(() => Submit(cluster, tmp, spec, "memory.json"));
            Assert.Contains("Coordinator:MaxUploadBytes = 2048", e.Message);
        }
        // Prepared into a dataset, only the upload quota bounds it.
        var tap = new ShardTap();
        await using (var cluster = await StartAsync(limits with { SharedDataDir = Path.Combine(tmp.Path, "shared") }, tap))
        {
            var (info, losses) = await RunAsync(cluster, tmp, spec, "prepared.json");
            Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
            Assert.Equal(12, losses.Length);
            Assert.Equal(0, tap.Values);
        }
        // A pipeline job's too (it used to read its files into memory, and was refused at submit naming the limit).
        var pipelineTap = new ShardTap();
        await using (var cluster = await StartAsync(limits with { SharedDataDir = Path.Combine(tmp.Path, "shared2") }, pipelineTap))
        {
            var pipeline = spec with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2 } } };
            var (info, losses) = await RunAsync(cluster, tmp, pipeline, "pipeline.json");
            Assert.True(info.State == JobState.Succeeded, $"pipeline: {info.State} {info.Message}");
            Assert.Equal(12, losses.Length);
            Assert.Equal(0, pipelineTap.Values);
        }
    }

    [Fact]
    public async Task A_pipeline_jobs_upload_is_prepared_into_a_dataset_its_stages_read_with_the_losses_of_memory()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.LanguageModel);
        spec = spec with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2 } } };

        var (memory, memoryLosses) = await RunInMemoryAsync(tmp, spec);

        var shared = Path.Combine(tmp.Path, "shared");
        var tap = new ShardTap();
        await using var prepared = await StartAsync(new CoordinatorOptions { SharedDataDir = shared }, tap);
        var (info, losses) = await RunAsync(prepared, tmp, spec, "prepared.json");
        Assert.True(info.State == JobState.Succeeded, $"prepared: {info.State} {info.Message}");
        AssertSameLosses(memoryLosses, losses, memory, info);
        // Both stages were given the dataset and read their rows themselves: no token went over the wire.
        var dataset = Path.Combine(shared, info.JobId);
        Assert.Equal(2, tap.Datasets.Count);
        Assert.All(tap.Datasets, d => Assert.Equal(dataset, d));
        Assert.Equal(0, tap.Values);
    }

    [Fact]
    public async Task Bad_data_fails_the_job_naming_the_file_and_line_and_leaves_no_dataset()
    {
        using var tmp = new TempDir();
        var lines = TestJobs.ClassificationJsonl(90).Split('\n').ToList();
        lines[4] = "{\"text\": \"broken\"";
        tmp.Write("d.jsonl", string.Join('\n', lines));
        var spec = TestJobs.Classifier("d.jsonl", steps: 12);
        var shared = Path.Combine(tmp.Path, "shared");
        await using var cluster = await StartAsync(new CoordinatorOptions { SharedDataDir = shared }, new ShardTap());
        var (info, _) = await RunAsync(cluster, tmp, spec, "bad.json");
        Assert.Equal(JobState.Failed, info.State);
        // Named as the spec named it, not as stored on the coordinator.
        Assert.Contains("d.jsonl", info.Message);
        Assert.Contains("d.jsonl:5: malformed JSON", info.Message);
        Assert.DoesNotContain("jobs/", info.Message);
        Assert.False(Directory.Exists(Path.Combine(shared, info.JobId)), "no dataset of the failed job");
        Assert.Empty(Directory.Exists(shared) ? Directory.EnumerateFileSystemEntries(shared) : []);
    }

    /// <summary>Holds the coordinator's preparing thread at its first pass ("job JOB: pass 1/..."), until released.</summary>
    sealed class PassGate : ILoggerProvider, ILogger
    {
        public readonly ManualResetEventSlim Reached = new(), Release = new();
        public ILogger CreateLogger(string categoryName) => this;
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!formatter(state, exception).Contains(": pass 1/", StringComparison.Ordinal) || Reached.IsSet) return;
            Reached.Set();
            Release.Wait(TimeSpan.FromMinutes(2));
        }
        public void Dispose() { }
    }

    [Fact]
    public async Task A_preparation_stopped_by_a_coordinator_restart_is_prepared_again_and_never_used_half()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.LanguageModel);
        var shared = Path.Combine(tmp.Path, "shared");
        var gate = new PassGate();
        var tap = new ShardTap();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { SharedDataDir = shared }, services: s =>
        {
            s.AddSingleton<ILoggerProvider>(gate);
            s.Configure<LoggerFilterOptions>(o => o.Rules.Add(new LoggerFilterRule(typeof(PassGate).FullName, null, LogLevel.Information, null)));
        });
        for (var i = 0; i < 2; i++) await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap)));
        var id = Submit(cluster, tmp, spec, "job.json");
        Assert.True(gate.Reached.Wait(TimeSpan.FromMinutes(2)), "the coordinator started preparing the job's data");
        // Half prepared: its temporary directory, no dataset at the job's place.
        Assert.NotEmpty(Directory.EnumerateDirectories(shared, $".{id}.partial-*"));
        Assert.False(Directory.Exists(Path.Combine(shared, id)));
        await cluster.RestartCoordinatorAsync(whileStopped: () =>
        {
            // The stopped coordinator's preparation goes on, sees it was cancelled and removes what it wrote.
            gate.Release.Set();
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
            while (Directory.EnumerateDirectories(shared, $".{id}.partial-*").Any() && DateTime.UtcNow < deadline) Thread.Sleep(20);
        });
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
        Assert.Empty(Directory.EnumerateDirectories(shared, $".{id}.*"));
        using var dataset = PreparedDataset.Open(Path.Combine(shared, id));
        Assert.EndsWith("t.txt", Assert.Single(dataset.Manifest.Sources).Path);
        Dtrain.Tests.Data.Datasets.PrepareTestSupport.AssertNarrowest(dataset); // the coordinator's prepare: the narrowest width too
        Assert.NotEmpty(tap.Datasets);
        Assert.All(tap.Datasets, d => Assert.Equal(Path.Combine(shared, id), d));
        Assert.Equal(0, tap.Values);
    }

    [Fact]
    public async Task What_an_interrupted_preparation_left_is_never_used_after_a_coordinator_restart()
    {
        using var tmp = new TempDir();
        var spec = Job(tmp, TaskKinds.LanguageModel);
        var shared = Path.Combine(tmp.Path, "shared");
        var tap = new ShardTap();
        await using var cluster = await StartAsync(new CoordinatorOptions { SharedDataDir = shared }, tap, workers: 0);
        // Queued: no worker yet.
        var id = Submit(cluster, tmp, spec, "job.json");
        // What a coordinator killed while preparing leaves (its temporary directory, half written, no manifest), and a
        // whole dataset of other data at the job's place (left by an earlier coordinator whose job had the same id).
        var partial = Path.Combine(shared, $".{id}.partial-12345-0123456789ab");
        Directory.CreateDirectory(partial);
        File.WriteAllBytes(Path.Combine(partial, "train-00000.tokens"), new byte[100]);
        var other = tmp.Write("other.txt", "some other text, not the job's data at all. ");
        DatasetPreparer.Prepare(PreparedUploads.OptionsFor(spec with { Data = spec.Data with { Train = other } }, Path.Combine(shared, id)));
        await cluster.RestartCoordinatorAsync();
        for (var i = 0; i < 2; i++) await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap)));
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");
        Assert.False(Directory.Exists(partial), "the partial directory was removed");
        using var dataset = PreparedDataset.Open(Path.Combine(shared, id));
        var source = Assert.Single(dataset.Manifest.Sources);
        Assert.EndsWith("t.txt", source.Path);
        Assert.Equal(new FileInfo(Path.Combine(tmp.Path, "t.txt")).Length, source.Bytes);
        Assert.All(tap.Datasets, d => Assert.Equal(Path.Combine(shared, id), d));
        Assert.Equal(0, tap.Values);
    }
}
