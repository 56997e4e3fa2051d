using System.Diagnostics;
using System.Globalization;
using Dtrain.Cli;
using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;

namespace Dtrain.Bench;

/// <summary>
/// `dataset-job [--sizes 10MB,100MB,1GB] [--steps N] [--dir DIR] [--s3 s3://bucket/prefix]`: training from a prepared
/// dataset (data.dataset) as the corpus grows. For each size, bundled text (Moby Dick, data/) repeated to that size is
/// prepared (char tokenizer, language model) into a temporary directory, and the same job — the quickstart model (W1:
/// char LSTM, 2 layers, hidden 256, batch 32 x 64), N steps, no evaluation or checkpoint before the end (the final evaluation
/// reads the validation split's first FinalEvalBatches batches, as `training.eval_batches` says: the bench measures training's data path, and
/// a whole 1 %-of-the-corpus split would take minutes at 1 GB and more at 5 GB on this machine) — runs from it on
/// a fresh local loopback cluster of a coordinator and 2 workers x 1 thread (and, with --s3, from a copy published under
/// that prefix, read through the workers' S3 cache). One table: the coordinator's and each worker's peak RSS (VmHWM
/// after the job) and each rank's ratio to the same rank in the smallest size's run of the same source, submit to first step, and the
/// steps' data wait (the slowest replica's time awaiting its rows) as a share of step time. Targets (issue 23):
/// coordinator ≤ 300 MB, each worker within 10 % of the smallest corpus's, submit to first step ≤ 10 s, data wait ≤ 1 %
/// (≤ 2 % from S3). The corpora, datasets and S3 caches are deleted after each size.
/// </summary>
internal static class DatasetJobBench
{
    const int FinalEvalBatches = 100;

    const string Usage = "dtrain-bench dataset-job [--sizes 10MB,100MB,1GB] [--steps N (30)] [--dir DIR] [--s3 s3://bucket/prefix]";

    sealed record Result(string Source, long Bytes, int Shards, double CoordinatorMb, double[] WorkerMb, double FirstStepSeconds, double FirstWaitMs, double WaitShare, int Steps);

    public static int Run(string root, string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--sizes", "--steps", "--dir", "--s3");
        if (BenchArgs.Positional(args) is [var stray, ..]) throw new ArgumentException($"unexpected argument \"{stray}\" (usage: {Usage})");
        var sizes = (BenchArgs.Option(args, "--sizes") ?? "10MB,100MB,1GB").Split(',').Select(ParseSize).Distinct().Order().ToList();
        var steps = BenchArgs.Option(args, "--steps") is { } s ? BenchArgs.Number("--steps", s, 2, 100_000, Usage) : 30;
        var s3 = BenchArgs.Option(args, "--s3");
        if (s3 is not null && !s3.StartsWith("s3://", StringComparison.Ordinal)) throw new ArgumentException($"--s3 \"{s3}\" is not an s3://bucket/prefix URI (usage: {Usage})");
        var parent = BenchArgs.Option(args, "--dir") ?? Path.GetTempPath();
        if (!Directory.Exists(parent)) throw new ArgumentException($"--dir {parent}: no such directory");
        var temp = Path.Combine(Path.GetFullPath(parent), $"dtrain-bench-dataset-job-{Environment.ProcessId}");
        Directory.CreateDirectory(temp);
        var seed = File.ReadAllBytes(Path.Combine(root, "data", "moby-dick", "moby-dick.txt"));
        Console.WriteLine($"dataset jobs: W1 (quickstart model: char LSTM 2 x 256, batch 32 x 64), 2 workers x 1 thread on loopback, {steps} steps; Moby Dick repeated to {string.Join(", ", sizes.Select(Size))}; {Environment.ProcessorCount} cores");
        var runs = new List<Result>();
        try
        {
            foreach (var size in sizes)
            {
                var corpus = Path.Combine(temp, "corpus.txt");
                using (var f = File.Create(corpus))
                    for (long written = 0; written < size; written += seed.Length) f.Write(seed, 0, (int)Math.Min(seed.Length, size - written));
                var local = Path.Combine(temp, "ds");
                var clock = Stopwatch.StartNew();
                var shards = Prepare(corpus, local);
                Console.WriteLine($"  {Size(size)}: prepared in {clock.Elapsed.TotalSeconds:F1} s ({shards} training shard(s))");
                string? remote = null;
                if (s3 is not null)
                {
                    // As `dtrain prepare -o s3://... --force` does: the prepared directory published with its manifest last.
                    remote = $"{s3.TrimEnd('/')}/dtrain-bench-{size}";
                    using var store = new S3DatasetStore(remote);
                    store.PublishDirectoryAsync(local, DatasetLayout.ManifestFile, true, CancellationToken.None).GetAwaiter().GetResult();
                }
                File.Delete(corpus);
                runs.Add(Job("local", local, size, shards, steps, temp, remote: false));
                Directory.Delete(local, recursive: true);
                if (remote is not null) runs.Add(Job("S3", remote, size, shards, steps, temp, remote: true));
            }
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
        Console.WriteLine();
        Console.WriteLine("| source | corpus | shards | coordinator peak RSS | rank 0 peak RSS (vs smallest) | rank 1 peak RSS (vs smallest) | submit → first step | first step's data wait | data wait / step time (steps 2..N) |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var r in runs)
        {
            var baseline = runs.First(b => b.Source == r.Source);
            string Worker(int i) => $"{r.WorkerMb[i]:F0} MB ({r.WorkerMb[i] / baseline.WorkerMb[i]:F2}x)";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Source} | {Size(r.Bytes)} | {r.Shards} | {r.CoordinatorMb:F0} MB | {Worker(0)} | {Worker(1)} | {r.FirstStepSeconds:F2} s | {r.FirstWaitMs:F0} ms | {r.WaitShare * 100:F2} % |"));
        }
        Console.WriteLine();
        var worstWorker = runs.Max(r => r.WorkerMb.Select((m, i) => m / runs.First(b => b.Source == r.Source).WorkerMb[i]).Max());
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"coordinator peak RSS at most {runs.Max(r => r.CoordinatorMb):F0} MB (target <= 300 MB: {Met(runs.All(r => r.CoordinatorMb <= 300))})"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"workers' peak RSS at most {worstWorker:F2}x the smallest corpus's (target <= 1.10x: {Met(worstWorker <= 1.10)})"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"submit to first step at most {runs.Max(r => r.FirstStepSeconds):F2} s (target <= 10 s: {Met(runs.All(r => r.FirstStepSeconds <= 10))})"));
        foreach (var source in runs.Select(r => r.Source).Distinct())
        {
            var worst = runs.Where(r => r.Source == source).Max(r => r.WaitShare);
            var target = source == "S3" ? 0.02 : 0.01;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{source}: data wait at most {worst * 100:F2} % of step time (target <= {target * 100:F0} %: {Met(worst <= target)})"));
        }
        return 0;
    }

    static string Met(bool met) => met ? "met" : "NOT met";

    /// <summary>"10MB", "1GB", "500KB" (decimal units, as `prepare --mb`), at least 1 KB.</summary>
    static long ParseSize(string text)
    {
        var t = text.Trim().ToUpperInvariant();
        var (unit, digits) = t.EndsWith("GB", StringComparison.Ordinal) ? (1_000_000_000L, t[..^2])
            : t.EndsWith("MB", StringComparison.Ordinal) ? (1_000_000L, t[..^2])
            : t.EndsWith("KB", StringComparison.Ordinal) ? (1_000L, t[..^2]) : (0L, t);
        if (unit == 0 || !long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n < 1 || n > 1_000_000)
            throw new ArgumentException($"--sizes: \"{text}\" is not a size such as 500KB, 10MB or 1GB (usage: {Usage})");
        return n * unit;
    }

    static string Size(long bytes) => bytes >= 1_000_000_000 ? $"{bytes / 1e9:0.##} GB" : bytes >= 1_000_000 ? $"{bytes / 1e6:0.##} MB" : $"{bytes / 1e3:0.##} KB";

    /// <summary>`dtrain prepare` of <paramref name="corpus"/> into directory <paramref name="output"/>: char tokens, 1 % held out; its training shards.</summary>
    static int Prepare(string corpus, string output)
    {
        DatasetPreparer.Prepare(new PrepareOptions
        {
            Train = SourceFiles.Expand([corpus], DatasetLayout.TrainSplit, DataFormats.Text),
            Output = output,
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Char },
            ValidationFraction = 0.01,
            Threads = Math.Max(1, Environment.ProcessorCount),
        });
        using var ds = PreparedDataset.Open(output);
        return ds.Train.Entry.Shards.Count;
    }

    /// <summary>The job from <paramref name="dataset"/> on a fresh cluster: peak RSS of every process, submit to first step, data wait.</summary>
    static Result Job(string source, string dataset, long bytes, int shards, int steps, string temp, bool remote)
    {
        // Kept after the run (small): what to read when a job fails.
        var logs = Path.Combine(Path.GetTempPath(), $"dtrain-bench-dataset-job-logs-{Environment.ProcessId}", $"{source}-{bytes}");
        var environment = new Dictionary<string, string>();
        if (!remote) environment["DTRAIN_Coordinator__DataRoots__0"] = Path.GetDirectoryName(dataset)!;
        var cache = Path.Combine(temp, "s3-cache");
        if (remote) environment["DTRAIN_S3_CACHE_DIR"] = cache;
        using var cluster = LocalCluster.Start(2, 0, 1, logs, TimeSpan.FromMinutes(2), environment);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var spec = new JobSpec
        {
            Name = $"dataset-{source.ToLowerInvariant()}-{bytes}",
            Task = TaskKinds.LanguageModel,
            Data = new DataSpec { Dataset = dataset },
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Char },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 2, EmbeddingDim = 64, HiddenSize = 256 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = 32, SeqLen = 64, MaxSteps = steps, ClipNorm = 1.0, Seed = 1, EvalInterval = 0, CheckpointInterval = 0, EvalBatches = FinalEvalBatches },
        };
        var specPath = Path.Combine(temp, "job.json");
        File.WriteAllText(specPath, JobSpecSerializer.Serialize(spec));
        var clock = Stopwatch.StartNew();
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(specPath), 2)).JobId;
        double firstStep = double.NaN, firstWait = 0, wait = 0, stepMs = 0, longestWait = 0;
        long longestAt = 0;
        var seen = 0;
        ClusterBench.FollowToSuccess(client, id, logs, e =>
        {
            if (seen++ == 0)
            {
                firstStep = clock.Elapsed.TotalSeconds;
                firstWait = e.DataWaitMs;
                return;
            }
            wait += e.DataWaitMs;
            stepMs += e.StepMs;
            if (e.DataWaitMs > longestWait) (longestWait, longestAt) = (e.DataWaitMs, e.Step);
        });
        // Rank order (each rank is compared with the same rank of the smallest corpus; every rank evaluates its part of the validation split): the job's
        // worker ids, named worker-N by the local cluster.
        var names = client.ListWorkers(new ListWorkersRequest()).Workers.ToDictionary(w => w.WorkerId, w => w.Name);
        var byRank = client.Get(new GetJobRequest { JobId = id }).WorkerIds
            .Select(w => int.Parse(names[w]["worker-".Length..], CultureInfo.InvariantCulture) - 1).ToList();
        if (byRank.Count != 2) throw new BenchFailureException($"job {id} ran on {byRank.Count} workers, not 2; logs in {logs}");
        var run = new Result(source, bytes, shards, PeakMb(cluster.CoordinatorProcessId), [.. byRank.Select(i => PeakMb(cluster.WorkerProcessId(i)))],
            firstStep, firstWait, stepMs > 0 ? wait / stepMs : double.NaN, seen);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  {source} {Size(bytes)}: {seen} steps, coordinator {run.CoordinatorMb:F0} MB, ranks 0 / 1 {run.WorkerMb[0]:F0} / {run.WorkerMb[1]:F0} MB, first step after {firstStep:F2} s, data wait {wait:F1} of {stepMs:F0} ms after it (longest {longestWait:F1} ms, at step {longestAt} of {steps})"));
        if (Directory.Exists(cache)) Directory.Delete(cache, recursive: true);
        return run;
    }

    /// <summary>A process's peak resident memory (VmHWM), in MB.</summary>
    static double PeakMb(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
    }
}
