using System.Text.Json;
using Dtrain.Data.Datasets;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Data.Datasets;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// `dtrain prepare --on-cluster` on a real cluster (coordinator and 2 workers over gRPC on loopback, a shared data root
/// of real files): the dataset holds exactly the tokenizer, labels and ids of a local `dtrain prepare` of the same
/// sources, and a dataset job trains the same losses from it; a bad source fails it naming the worker and the file,
/// with nothing written; what it cannot do is refused before any worker is asked.
/// </summary>
[Collection(DatasetJobCollection.Name)]
public sealed class ClusterPrepareTests
{
    public static TheoryData<string> Cases() => ["char-lm", "word-lm", "classification", "char-lm-fraction", "word-lm-fraction-early"];

    static async Task<InProcessCluster> StartAsync(string dataRoot, int workers = 2)
    {
        var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [dataRoot] });
        for (var i = 0; i < workers; i++) await cluster.AddWorkerAsync();
        if (workers > 0) await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        return cluster;
    }

    static PrepareRequest Request(PrepareOptions o, string output, IEnumerable<string> train, IEnumerable<string> validation) => new()
    {
        Sources = { train },
        Validation = { validation },
        Output = output,
        OptionsJson = DatasetPreparer.PartJson(o with { Train = [], Validation = [], Output = "" }),
    };

    static async Task<(List<string> Lines, DatasetManifest Manifest)> PrepareAsync(InProcessCluster cluster, PrepareRequest request)
    {
        using var call = cluster.Client.Prepare(request);
        var lines = new List<string>();
        DatasetManifest? manifest = null;
        await foreach (var e in call.ResponseStream.ReadAllAsync())
        {
            if (e.Message != "") lines.Add(e.Message);
            if (e.ManifestJson != "") manifest = JsonSerializer.Deserialize<DatasetManifest>(e.ManifestJson, DatasetLayout.Json);
        }
        Assert.NotNull(manifest);
        return (lines, manifest);
    }

    /// <summary>The sources of a case (train files, validation files) and its options; sizes chosen so that the byte split cuts where the case needs it.</summary>
    static (List<string> Train, List<string> Validation, PrepareOptions Options) Sources(TempDir tmp, string c)
    {
        var data = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(data);
        string Write(string name, string text)
        {
            var path = Path.Combine(data, name);
            File.WriteAllText(path, text);
            return path;
        }
        if (c == "classification")
        {
            var lines = TestJobs.ClassificationJsonl(90).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            // The split falls after b.jsonl: the second part holds c.jsonl and the validation file.
            var train = new List<string> { Write("a.jsonl", string.Join('\n', lines[..25]) + "\n"), Write("b.jsonl", string.Join('\n', lines[25..50]) + "\n"), Write("c.jsonl", string.Join('\n', lines[50..72]) + "\n") };
            var validation = new List<string> { Write("v.jsonl", string.Join('\n', lines[72..]) + "\n") };
            return (train, validation, PrepareTestSupport.Options("unused", train, validation: validation) with
            {
                Task = TaskKinds.Classification,
                Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word },
                ShardTokens = 40,
            });
        }
        if (c == "char-lm-fraction")
        {
            // No validation source: the last 10% of the joined text, cut inside the second part.
            var train = new List<string> { Write("t1.txt", TestJobs.Text(20) + "😀"), Write("t2.txt", "😀 Ünïcode " + TestJobs.Text(18)), Write("t3.txt", TestJobs.Text(20) + "😀😀") };
            return (train, [], PrepareTestSupport.Options("unused", train) with { ValidationFraction = 0.1 });
        }
        if (c == "word-lm-fraction-early")
        {
            // 70% held out: the cut falls inside the first part, the second is all validation (joined to the first with "\n").
            var train = new List<string> { Write("t1.txt", TestJobs.Text(20)), Write("t2.txt", "The Cat SAT.\nOn the mat " + TestJobs.Text(9)), Write("t3.txt", TestJobs.Text(10) + "\n\n  the end") };
            return (train, [], PrepareTestSupport.Options("unused", train) with
            {
                ValidationFraction = 0.7,
                Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word, Lowercase = true },
            });
        }
        if (c == "word-lm")
        {
            // The split falls between training files: the second part's first record is joined to the first part's with "\n".
            var train = new List<string> { Write("t1.txt", TestJobs.Text(12)), Write("t2.txt", "The Cat SAT.\nOn the mat " + TestJobs.Text(9)), Write("t3.txt", TestJobs.Text(10) + "\n\n  the end") };
            var validation = new List<string> { Write("v1.txt", "the Dog sat on the cat. " + TestJobs.Text(3)), Write("v2.txt", "mat log") };
            return (train, validation, PrepareTestSupport.Options("unused", train, validation: validation) with
            {
                Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word, Lowercase = true, MinFrequency = 2 },
            });
        }
        {
            // The split falls between validation files: the second part holds only validation text, joined to the first part's.
            var train = new List<string> { Write("t1.txt", TestJobs.Text(20) + "😀é"), Write("t2.txt", "Ünïcode 😀 " + TestJobs.Text(18)), Write("t3.txt", TestJobs.Text(20)) };
            var validation = new List<string> { Write("v1.txt", TestJobs.Text(20)), Write("v2.txt", "the Cat 😀 sat. " + TestJobs.Text(80)) };
            return (train, validation, PrepareTestSupport.Options("unused", train, validation: validation));
        }
    }

    static IEnumerable<DatasetFile> Files(PreparedDataset ds) =>
        ds.Manifest.Train.Shards.Concat(ds.Manifest.Validation.Shards).SelectMany(s => new[] { s.Tokens, s.Offsets, s.Labels }).OfType<DatasetFile>();

    static void AssertSameIds(PreparedDataset local, PreparedDataset cluster)
    {
        Assert.Equal(local.Tokenizer.Kind, cluster.Tokenizer.Kind);
        Assert.Equal(local.Tokenizer.ToState().Tokens, cluster.Tokenizer.ToState().Tokens);
        Assert.Equal(local.Labels.Names, cluster.Labels.Names);
        Assert.Equal(local.Manifest.Settings, cluster.Manifest.Settings);
        Assert.Equal(local.Manifest.Sources, cluster.Manifest.Sources);
        Assert.Equal(local.Manifest.Report.Read, cluster.Manifest.Report.Read);
        // The workers narrow the ids to the vocabulary's width as a local prepare does (a char vocabulary: 1 byte).
        Assert.Equal(local.Manifest.TokenDtype, cluster.Manifest.TokenDtype);
        PrepareTestSupport.AssertNarrowest(cluster);
        foreach (var (l, r) in new[] { (local.Train, cluster.Train), (local.Validation, cluster.Validation) })
        {
            Assert.Equal(l.Tokens, r.Tokens);
            Assert.Equal(l.Records, r.Records);
            if (local.Manifest.Settings.Task == TaskKinds.LanguageModel)
            {
                Assert.Equal(l.ReadAllTokens(), r.ReadAllTokens());
                continue;
            }
            var a = l.ReadAllRecords().ToList();
            var b = r.ReadAllRecords().ToList();
            Assert.Equal(a.Count, b.Count);
            for (var i = 0; i < a.Count; i++)
            {
                Assert.Equal(a[i].Ids, b[i].Ids);
                Assert.Equal(a[i].Label, b[i].Label);
            }
        }
    }

    static JobSpec DatasetJob(string c, string dataset, TokenizerSpec tokenizer)
    {
        var spec = c == "classification" ? TestJobs.Classifier("unused", steps: 12) : TestJobs.CharLm("unused", steps: 12);
        spec = spec with { Data = new DataSpec { Dataset = dataset }, Tokenizer = tokenizer };
        return c == "classification" ? spec with { Training = spec.Training with { BatchSize = 10 } } : spec with { Training = spec.Training with { BatchSize = 7, SeqLen = 12 } };
    }

    static async Task<(JobInfo Info, double[] Losses)> TrainAsync(InProcessCluster cluster, TempDir tmp, JobSpec spec, string name)
    {
        var path = tmp.Write(name, JobSpecSerializer.Serialize(spec));
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{name}: {info.State} {info.Message}");
        return (info, cluster.Client.History(new GetJobRequest { JobId = id }).Events.Where(e => e.KindCase == JobEvent.KindOneofCase.Step).Select(e => e.Step.Loss).ToArray());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Two_workers_prepare_the_ids_of_a_local_prepare_and_a_job_trains_the_same_losses_from_it(string c)
    {
        using var tmp = new TempDir();
        var (train, validation, options) = Sources(tmp, c);
        // Blocks of 64 bytes: every shard file has several, each hashed by whoever wrote it.
        options = options with { BlockBytes = 64 };
        var local = Path.Combine(tmp.Path, "local");
        DatasetPreparer.Prepare(options with { Output = local });
        await using var cluster = await StartAsync(tmp.Path);

        var output = Path.Combine(tmp.Path, "datasets", "on-cluster");
        var (lines, manifest) = await PrepareAsync(cluster, Request(options, output, train, validation));
        var passes = validation.Count == 0 ? 3 : 2;
        if (passes == 3) Assert.Contains(lines, l => l.StartsWith("pass 1/3: the length of the text on 2 worker(s)", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"pass {passes - 1}/{passes}: counting", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"pass {passes}/{passes}: encoding", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.Contains("part 2 encoded by", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith($"prepared {output}", StringComparison.Ordinal));
        using (var a = PreparedDataset.Open(local))
        using (var b = PreparedDataset.Open(output, verify: true))
        {
            Assert.Equal(b.Manifest.Train.Shards.Select(f => f.Tokens), manifest.Train.Shards.Select(f => f.Tokens));
            Assert.Equal(DatasetLayout.ShardName(DatasetLayout.TrainSplit, 0, "tokens"), b.Manifest.Train.Shards[0].Tokens.Name);
            AssertSameIds(a, b);
            // Format version 2 from both: the workers report each block's SHA-256, the same a local prepare computes
            // (checked against the files themselves; a file the same in both has the same entry).
            var locals = Files(a).ToDictionary(f => f.Name);
            var same = 0;
            foreach (var (ds, f) in Files(a).Select(f => (a, f)).Concat(Files(b).Select(f => (b, f))))
            {
                Assert.Equal(2, ds.Manifest.Version);
                Assert.Equal(64, f.BlockBytes);
                Assert.Equal(PrepareTestSupport.BlockHashes(File.ReadAllBytes(Path.Combine(ds.Directory, f.Name)), 64).Select(h => h!.GetValue<string>()), f.BlockSha256!);
                if (ds == b && locals.TryGetValue(f.Name, out var l) && l.Sha256 == f.Sha256)
                {
                    Assert.Equal(l, f);
                    same++;
                }
            }
            Assert.True(same > 0, "some shard file is the same from both");
        }
        Assert.Empty(Directory.EnumerateDirectories(Path.GetDirectoryName(output)!, ".*"));
        Assert.All(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers, w => Assert.Equal(WorkerState.Idle, w.State));

        var (fromLocal, localLosses) = await TrainAsync(cluster, tmp, DatasetJob(c, local, options.Tokenizer), "local.json");
        var (fromCluster, clusterLosses) = await TrainAsync(cluster, tmp, DatasetJob(c, output, options.Tokenizer), "cluster.json");
        Assert.Equal(12, localLosses.Length);
        Assert.Equal(localLosses, clusterLosses);
        Assert.Equal(fromLocal.LastEval.Loss, fromCluster.LastEval.Loss);
    }

    [Fact]
    public async Task The_cli_prints_the_progress_and_the_dataset()
    {
        using var tmp = new TempDir();
        var (train, validation, _) = Sources(tmp, "char-lm");
        await using var cluster = await StartAsync(tmp.Path);
        var output = Path.Combine(tmp.Path, "cli-ds");
        var args = new List<string> { "prepare", "--on-cluster", "--coordinator", cluster.Address };
        args.AddRange(train);
        args.Add("--validation");
        args.AddRange(validation);
        args.AddRange(["-o", output, "--shard-tokens", "500"]);
        var env = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken };
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), env, [.. args]);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(output, r.Stdout.Trim());
        Assert.Contains("pass 1/2: counting char tokens of the training sources on 2 worker(s)", r.Stderr);
        Assert.Contains("part 2 encoded by", r.Stderr);
        using var ds = PreparedDataset.Open(output, verify: true);
        Assert.Equal(500, ds.Manifest.Settings.ShardTokens);

        // Refused by the coordinator: exit 2 and its message.
        r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), env, "prepare", "--on-cluster", "--coordinator", cluster.Address, train[0], "-o", Path.Combine(tmp.Path, "x"), "--task", "classification", "--format", "jsonl");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("--on-cluster needs --validation sources for classification", r.Stderr);
    }

    [Fact]
    public async Task A_bad_source_fails_the_prepare_naming_the_worker_and_the_file_and_nothing_is_written()
    {
        using var tmp = new TempDir();
        var (train, validation, options) = Sources(tmp, "classification");
        await using var cluster = await StartAsync(tmp.Path);
        var output = Path.Combine(tmp.Path, "out", "ds");

        // Counting: a malformed record in the last training file (the second worker's part).
        var good = File.ReadAllText(train[2]);
        File.WriteAllText(train[2], good + "{\"text\": \"never closed\n");
        var e = await Assert.ThrowsAsync<RpcException>(() => PrepareAsync(cluster, Request(options, output, train, validation)));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("worker w", e.Status.Detail);
        Assert.Contains("failed counting part 2", e.Status.Detail);
        Assert.Contains($"{train[2]}:23", e.Status.Detail);
        Assert.False(Directory.Exists(output));
        AssertNothingIn(Path.GetDirectoryName(output)!);

        // Encoding (shards already written): a validation label the training data never has.
        File.WriteAllText(train[2], good);
        File.AppendAllText(validation[0], "{\"text\": \"green eggs\", \"label\": \"eggs\"}\n");
        e = await Assert.ThrowsAsync<RpcException>(() => PrepareAsync(cluster, Request(options, output, train, validation)));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("failed encoding part 2", e.Status.Detail);
        Assert.Contains(validation[0], e.Status.Detail);
        Assert.Contains("label \"eggs\" never occurs in the training data", e.Status.Detail);
        Assert.False(Directory.Exists(output));
        AssertNothingIn(Path.GetDirectoryName(output)!);
        Assert.All(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers, w => Assert.Equal(WorkerState.Idle, w.State));
    }

    [Fact]
    public async Task A_worker_stopped_while_encoding_fails_the_prepare_once_it_is_lost_and_the_remaining_worker_prepares_alone()
    {
        using var tmp = new TempDir();
        var data = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(data);
        var train = Path.Combine(data, "t.txt");
        File.WriteAllText(train, TestJobs.Text(20));
        // Validation files no worker encodes before the test stops one (16 GiB each, sparse: NUL characters read from holes):
        // part 1 is t.txt and v1.txt (worker-1), part 2 is v2.txt (worker-2).
        string Sparse(string name)
        {
            var path = Path.Combine(data, name);
            using var f = File.Create(path);
            f.SetLength(16L << 30);
            return path;
        }
        var (v1, v2) = (Sparse("v1.txt"), Sparse("v2.txt"));
        var env = new Dictionary<string, string>(ElasticTests.FastTimeouts) { ["DTRAIN_Coordinator__DataRoots__0"] = data };
        using var processes = new Processes(tmp, 2, env);
        var output = Path.Combine(data, "out", "ds");

        var stderr = new System.Text.StringBuilder();
        var encoding = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var cli = new System.Diagnostics.Process { StartInfo = CliRunner.StartInfo(tmp.Path, null, "prepare", "--on-cluster", "--coordinator", processes.Cluster.Address, train, "--validation", v1, v2, "-o", output) };
        cli.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            if (e.Data.StartsWith("pass 2/2: encoding", StringComparison.Ordinal)) encoding.TrySetResult();
        };
        cli.Start();
        cli.BeginErrorReadLine();
        var exited = cli.WaitForExitAsync();
        string Err()
        {
            lock (stderr) return stderr.ToString();
        }
        // Stopped as soon as the encoding pass starts (bounded by the CLI ending first: then it fails here).
        Assert.True(await Task.WhenAny(encoding.Task, exited) == encoding.Task, $"the prepare ended before encoding: exit {(cli.HasExited ? cli.ExitCode : -1)}\n{Err()}");
        var part2 = System.Text.RegularExpressions.Regex.Match(Err(), @"part 2: worker (w\d+) worker-(\d+) \(");
        Assert.True(part2.Success, Err());
        var (victim, index) = (part2.Groups[1].Value, int.Parse(part2.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) - 1);
        var pid = processes.Cluster.WorkerProcessId(index).ToString(System.Globalization.CultureInfo.InvariantCulture);
        System.Diagnostics.Process.Start("kill", ["-STOP", pid])!.WaitForExit();
        try
        {
            // Without a bound the prepare waited for the stopped worker until Ctrl-C: it ends once the registry declares it lost.
            if (await Task.WhenAny(exited, Task.Delay(TimeSpan.FromMinutes(3))) != exited)
            {
                cli.Kill(entireProcessTree: true);
                Assert.Fail($"the prepare still waits for the stopped worker {victim}:\n{Err()}");
            }
            await exited;
            var err = Err();
            Assert.True(cli.ExitCode == 1, $"exit {cli.ExitCode}\n{err}");
            Assert.Contains($"worker {victim} worker-{index + 1} (", err);
            Assert.Contains($"failed encoding part 2 ({v2}): lost: no heartbeat for 3s", err);
            Assert.Contains("nothing was written to the output", err);
            // The other worker's encoding was cancelled and it confirmed it stopped before the temporary directory went.
            var other = processes.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.WorkerId != victim && w.Name.StartsWith("worker-", StringComparison.Ordinal) && w.State != WorkerState.Lost);
            Assert.Contains($"stopped on {other.WorkerId};", err);
            Assert.False(Directory.Exists(output));
            AssertNothingIn(Path.GetDirectoryName(output)!);
            var states = processes.Client.ListWorkers(new ListWorkersRequest()).Workers.ToDictionary(w => w.WorkerId, w => w.State);
            Assert.Equal(WorkerState.Lost, states[victim]);
            Assert.Equal(WorkerState.Idle, states[other.WorkerId]);

            // Again on the remaining worker (the stopped one still lost), into the same output.
            var small = Path.Combine(data, "v3.txt");
            File.WriteAllText(small, TestJobs.Text(5));
            var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), "prepare", "--on-cluster", "--coordinator", processes.Cluster.Address, train, "--validation", small, "-o", output);
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Contains("on 1 worker(s) (of 1 idle)", r.Stderr);
            Assert.Contains($"part 1 encoded by {other.WorkerId}", r.Stderr);
            using var ds = PreparedDataset.Open(output, verify: true);
            Assert.True(ds.Train.Tokens > 0);
        }
        finally
        {
            System.Diagnostics.Process.Start("kill", ["-CONT", pid])!.WaitForExit();
        }
    }

    [Fact]
    public async Task A_released_prepare_is_stopped_on_the_worker_before_the_release_answers_and_its_late_calls_are_refused()
    {
        using var tmp = new TempDir();
        var data = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(data);
        // 16 GiB (sparse): counted to the end only if the release does not stop it.
        var big = Path.Combine(data, "big.txt");
        using (var f = File.Create(big)) f.SetLength(16L << 30);
        using var processes = new Processes(tmp, 1);
        var address = processes.Client.ListWorkers(new ListWorkersRequest()).Workers.Single().Address;
        using var channel = Dtrain.Cli.Remote.Channel(address);
        var worker = new Dtrain.Protos.Worker.WorkerControl.WorkerControlClient(channel);
        var count = new Dtrain.Protos.Worker.PrepareCountRequest { PrepareId = "prepare-released", OptionsJson = DatasetPreparer.PartJson(PrepareTestSupport.Options("", [big])), Cut = -1 };
        using var running = worker.PrepareCountAsync(count);
        await worker.ReleaseAsync(new Dtrain.Protos.Worker.ReleaseRequest { JobId = "prepare-released", Reason = "the prepare failed" });
        var stopped = await Assert.ThrowsAsync<RpcException>(() => running.ResponseAsync);
        Assert.True(stopped.StatusCode is StatusCode.Aborted or StatusCode.FailedPrecondition, stopped.ToString());
        var late = await Assert.ThrowsAsync<RpcException>(() => worker.PrepareCountAsync(count).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, late.StatusCode);
        Assert.Contains("prepare-released was released by the coordinator", late.Status.Detail);
    }

    [Fact]
    public void The_sources_are_cut_into_contiguous_parts_of_about_equal_bytes_at_most_one_per_worker_and_file()
    {
        var files = Enumerable.Range(0, 5).Select(i => new SourceFile($"/d/{i}.txt", DatasetLayout.TrainSplit, "text", "none")).ToList();
        string Parts(long[] sizes, int workers) =>
            string.Join(" | ", ClusterPrepare.Split(files, sizes, workers).Select(p => string.Join(",", p.Select(f => Path.GetFileNameWithoutExtension(f.Path)))));
        Assert.Equal("0,1,2,3 | 4", Parts([10, 10, 10, 10, 60], 2));
        Assert.Equal("0 | 1,2,3,4", Parts([60, 10, 10, 10, 10], 2));
        Assert.Equal("0,1 | 2,3 | 4", Parts([10, 10, 10, 10, 10], 3));
        Assert.Equal("0 | 1 | 2 | 3 | 4", Parts([1, 1, 1, 1, 1], 8));
        Assert.Equal("0,1,2,3,4", Parts([1, 1, 1, 1, 1], 1));
        Assert.Equal("0,1,2 | 3 | 4", Parts([0, 0, 0, 0, 0], 3));
    }

    static void AssertNothingIn(string directory)
    {
        var left = Directory.EnumerateFileSystemEntries(directory, "*", SearchOption.AllDirectories).ToList();
        Assert.True(left.Count == 0, $"left in {directory}: {string.Join(", ", left)}");
    }

    [Fact]
    public async Task What_the_cluster_cannot_prepare_is_refused_before_any_worker_is_asked()
    {
        using var tmp = new TempDir();
        var (train, validation, options) = Sources(tmp, "char-lm");
        using var outside = new TempDir();
        var elsewhere = outside.Write("t.txt", TestJobs.Text(5));
        await using var cluster = await StartAsync(tmp.Path, workers: 0);
        var output = Path.Combine(tmp.Path, "ds");
        async Task Refused(PrepareRequest request, StatusCode code, string words)
        {
            var e = await Assert.ThrowsAsync<RpcException>(() => PrepareAsync(cluster, request));
            Assert.True(e.StatusCode == code, $"{e.StatusCode}: {e.Status.Detail}");
            Assert.Contains(words, e.Status.Detail);
            Assert.False(Directory.Exists(output));
        }
        await Refused(Request(options, output, [elsewhere], validation), StatusCode.InvalidArgument, $"\"{elsewhere}\" is not under the coordinator's data roots");
        await Refused(Request(options, output, ["data/t1.txt"], validation), StatusCode.InvalidArgument, "needs absolute paths under the coordinator's data roots");
        await Refused(Request(options, output, [Path.Combine(tmp.Path, "data", "nothing*.txt")], validation), StatusCode.InvalidArgument, "no file matches");
        await Refused(Request(options, Path.Combine(outside.Path, "ds"), train, validation), StatusCode.InvalidArgument, "is not a directory under the coordinator's data roots");
        await Refused(Request(options, "s3://bucket/ds", train, validation), StatusCode.InvalidArgument, "not s3://");
        await Refused(Request(options with { Task = TaskKinds.Classification, Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word } }, output, train, []), StatusCode.InvalidArgument, "--on-cluster needs --validation sources for classification");
        await Refused(Request(options with { Tokenizer = new TokenizerSpec { Kind = "bpe" } }, output, train, validation), StatusCode.InvalidArgument, "--tokenizer \"bpe\" must be char or word");
        // An output the coordinator cannot write beside (here: under a file; in the shipped compose file: the read-only
        // `datasets` volume) is refused before any worker is reserved — it used to fail after, with the bare IOException.
        var underFile = Path.Combine(train[0], "ds");
        var unwritable = await Assert.ThrowsAsync<RpcException>(() => PrepareAsync(cluster, Request(options, underFile, train, validation)));
        Assert.True(unwritable.StatusCode == StatusCode.FailedPrecondition, $"{unwritable.StatusCode}: {unwritable.Status.Detail}");
        Assert.Contains($"-o {underFile}: the coordinator cannot write in {train[0]}", unwritable.Status.Detail);
        Assert.Contains("prepare on the host", unwritable.Status.Detail);
        await Refused(Request(options, output, train, validation), StatusCode.FailedPrecondition, "no idle worker");
        // An output whose parents do not exist yet: the writability check created them (to probe) and a prepare refused
        // after it left them behind, empty. Nothing is left now.
        var nested = Path.Combine(tmp.Path, "new", "deeper", "ds");
        var noWorker = await Assert.ThrowsAsync<RpcException>(() => PrepareAsync(cluster, Request(options, nested, train, validation)));
        Assert.True(noWorker.StatusCode == StatusCode.FailedPrecondition && noWorker.Status.Detail.Contains("no idle worker", StringComparison.Ordinal), $"{noWorker.StatusCode}: {noWorker.Status.Detail}");
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "new")), $"{Path.Combine(tmp.Path, "new")} was left behind by a refused prepare");

        // Authorized like submit: a viewer may not, a submitter may (and is told there is no idle worker).
        var (viewer, _, _) = Dtrain.Tests.Security.AuthTestSupport.Token(cluster, "dashboard", Dtrain.Server.Auth.Role.Viewer);
        var (alice, _, _) = Dtrain.Tests.Security.AuthTestSupport.Token(cluster, "alice", Dtrain.Server.Auth.Role.Submitter);
        async Task<RpcException> Call(Jobs.JobsClient client)
        {
            using var call = client.Prepare(Request(options, output, train, validation));
            return await Assert.ThrowsAsync<RpcException>(async () => { await foreach (var _ in call.ResponseStream.ReadAllAsync()) { } });
        }
        var denied = await Call(viewer);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("may not prepare datasets on the cluster", denied.Status.Detail);
        Assert.Equal(StatusCode.FailedPrecondition, (await Call(alice)).StatusCode);
    }
}
