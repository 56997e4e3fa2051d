using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dtrain.Cli;
using Dtrain.Runtime;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;

namespace Dtrain.Bench;

/// <summary>
/// The cluster suite, side by side in one run: for each workload (W1, W2, GRU, spam classification) the single-process
/// engine with 1 and 2 threads, two independent 1-thread processes at once (with the whole batch each: the machine's
/// ceiling; with half of it each: the data-parallel ceiling), the cluster with 1, 2 and 4 workers (1 thread each; 1 worker also with 2 threads), 2
/// workers with overlap on (auto leaves it off when the workers' threads fill the cores), 2 workers with the whole batch each
/// (weak scaling: global batch doubled; DDP the same), and PyTorch's single process and DDP over gloo (bench/anchors/pytorch_ddp_bench.py) when
/// Debian's python3-torch is installed. Every system runs in a fresh process of its own, in the same order each
/// round; the table shows the median over rounds with min–max. Scaling efficiency = throughput(N workers x 1 thread)
/// / (N x throughput(1 process x 1 thread)), each system against its own single process.
/// </summary>
public static class ClusterBench
{
    // A long warm-up: the first steps of a fresh process are slow while libtorch pages in and builds its kernels.
    // 100 timed steps (~7-12 s of W1): shorter windows swung ~10 % round to round on this 2-core machine.
    const int Warmup = 20, Timed = 100;

    const string MachineCeilingRow = "dtrain, 2 independent processes x 1 thread at once (mean)";
    const string HalfBatchRow = "dtrain, 2 independent processes x 1 thread at once, half the batch each (sum)";
    // Weak scaling: every replica keeps the whole single-process batch (the global batch doubles), as DDP's and
    // Horovod's per-process batch sizes usually are; the rows above split the same global batch (strong scaling).
    const string WeakRow = "dtrain cluster, 2 workers x 1 thread, whole batch each (weak scaling)";
    const string WeakTorchRow = "PyTorch DDP gloo, 2 processes x 1 thread, whole batch each (weak scaling)";

    /// <summary>One workload: its spec (threads and steps are set per run) and what to run of it.</summary>
    sealed record Workload(string Key, string Title, JobSpec Spec, int Warmup, int Timed, string? PyTorchCell, int PyTorchHidden, bool Overlap, bool FourWorkers);

    sealed record Row(string Workload, string Name, Func<double> SamplesPerSecond, string Note)
    {
        public List<double> Rounds { get; } = [];
        public double Median => BenchArgs.Median(Rounds);
        public double Mean => Rounds.Count == 0 ? double.NaN : Rounds.Average();
    }

    /// <summary>`cluster [rounds] [w1,w2,gru,spam] [--systems TEXT,...] [--report FILE]` (--systems: only rows whose name contains one of the texts).</summary>
    public static int Run(string root, string[] args)
    {
        const string Usage = "dtrain-bench cluster [ROUNDS] [w1,w2,gru,spam] [--systems TEXT,...] [--report FILE]";
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--systems", "--report");
        // [ROUNDS] [WORKLOADS]: either may be left out (a number is the rounds).
        var positional = BenchArgs.Positional(args).ToList();
        var rounds = 3;
        if (positional.Count > 0 && positional[0].All(char.IsAsciiDigit))
        {
            rounds = int.TryParse(positional[0], NumberStyles.None, CultureInfo.InvariantCulture, out var r) && r is >= 1 and <= 100 ? r
                : throw new ArgumentException($"ROUNDS {positional[0]}: a whole number from 1 to 100 (usage: {Usage})");
            positional.RemoveAt(0);
        }
        if (positional.Count > 1) throw new ArgumentException($"unexpected argument \"{positional[1]}\" (usage: {Usage})");
        string? Option(string name) => BenchArgs.Option(args, name);
        var report = Option("--report") ?? "bench-cluster.md";
        var filter = Option("--systems")?.Split(',');
        var only = positional.FirstOrDefault()?.Split(',') ?? ["w1", "w2", "gru", "spam"];
        if (only.FirstOrDefault(k => k is not ("w1" or "w2" or "gru" or "spam")) is { } unknown)
            throw new ArgumentException($"unknown workload \"{unknown}\": w1, w2, gru or spam (usage: {Usage})");
        using var tmp = new TempDir();
        var text = Path.Combine(tmp.Path, "random.txt");
        // Random printable characters: the vocabulary is ~96 like W1's, and throughput does not depend on content.
        var rng = new Random(1);
        var sb = new StringBuilder();
        for (var i = 0; i < 400_000; i++) sb.Append((char)(32 + rng.Next(95)));
        File.WriteAllText(text, sb.ToString());

        JobSpec CharLm(string name, string cell, int hidden) => new()
        {
            Name = name,
            Data = new DataSpec { Format = DataFormats.Text, Train = text, ValidationFraction = 0.01 },
            Model = new ModelSpec { Cell = cell, Layers = 2, EmbeddingDim = 64, HiddenSize = hidden, GateBias = 0 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = 32, SeqLen = 64, LmSampling = LmSamplingKinds.Random, ClipNorm = 1.0, EvalInterval = 0, CheckpointInterval = 0 },
        };
        var spamPath = Path.Combine(root, "examples", "spam-lstm.json");
        var spam = JobSpecSerializer.Parse(File.ReadAllText(spamPath), spamPath);
        spam = spam with
        {
            Data = spam.Data with { Train = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(spamPath)!, spam.Data.Train ?? throw new InvalidOperationException($"{spamPath} names no data.train"))) },
            Training = spam.Training with { EvalInterval = 0, CheckpointInterval = 0 },
        };
        var workloads = new List<Workload>
        {
            new("w1", "W1: char LSTM LM, vocab ~96, embedding 64, hidden 256, 2 layers, batch 32 x 64, Adam 2e-3, clip 1.0 (0.89 M parameters)",
                CharLm("w1", CellKinds.Lstm, 256), Warmup, Timed, "lstm", 256, Overlap: true, FourWorkers: true),
            new("w2", "W2: W1 with hidden 1024 (12.96 M parameters)", CharLm("w2", CellKinds.Lstm, 1024), 5, 15, "lstm", 1024, Overlap: true, FourWorkers: true),
            new("gru", "GRU: W1 with a GRU cell", CharLm("gru", CellKinds.Gru, 256), Warmup, Timed, "gru", 256, Overlap: true, FourWorkers: false),
            new("spam", "spam: examples/spam-lstm.json (SpamAssassin, word tokens, bidirectional LSTM classifier, batch 32)", spam, 10, 40, null, 0, Overlap: false, FourWorkers: false),
        }.Where(w => only.Contains(w.Key)).ToList();
        var python = PyTorchAvailable();

        var systems = new List<Row>();
        foreach (var w in workloads)
        {
            string SpecFile(string suffix, JobSpec spec)
            {
                var path = Path.Combine(tmp.Path, $"{w.Key}-{suffix}.json");
                File.WriteAllText(path, JobSpecSerializer.Serialize(spec with { Training = spec.Training with { MaxSteps = w.Warmup + w.Timed } }));
                return path;
            }
            JobSpec Threads(int n) => w.Spec with { Training = w.Spec.Training with { Threads = n } };
            JobSpec Batch(JobSpec spec, int rows) => spec with { Training = spec.Training with { BatchSize = rows } };
            var one = SpecFile("t1", Threads(1));
            var two = SpecFile("t2", Threads(2));
            var cluster = SpecFile("cluster", Threads(0));
            var on = SpecFile("on", Threads(0) with { Parallelism = new ParallelismSpec { Overlap = OverlapKinds.On } });
            var overlapNote = OverlapKinds.Possible(w.Spec) ? "overlap auto: off when the workers' threads fill the host's cores" : "no overlap (classifier)";
            systems.Add(new(w.Key, "dtrain, 1 process x 1 thread", () => SingleProcess(one, w), "`dtrain train` engine, fresh process"));
            systems.Add(new(w.Key, "dtrain, 1 process x 2 threads", () => SingleProcess(two, w), ""));
            // The machine's own ceiling for 2 x 1 thread: two independent processes at once (no communication at all),
            // each slowed only by sharing the memory system and caches with the other. Reported as their mean.
            systems.Add(new(w.Key, MachineCeilingRow, () => TwoAtOnce(one, w), "no communication: the machine's ceiling for 2 x 1 thread"));
            // What data parallelism itself allows here: each of 2 replicas computes half the global batch. Two
            // independent processes with half the batch each, at once, no communication; their samples/s summed.
            var half = SpecFile("t1-half", Batch(Threads(1), w.Spec.Training.BatchSize / 2));
            systems.Add(new(w.Key, HalfBatchRow, () => 2 * TwoAtOnce(half, w), "no communication: the ceiling for 2 data-parallel replicas (see `dtrain-bench recurrent`)"));
            systems.Add(new(w.Key, "dtrain cluster, 1 worker x 2 threads", () => ClusterThroughput(cluster, 1, 2, w, Path.Combine(tmp.Path, $"{w.Key}-c1")), "coordinator + worker processes, loopback"));
            systems.Add(new(w.Key, "dtrain cluster, 2 workers x 1 thread", () => ClusterThroughput(cluster, 2, 1, w, Path.Combine(tmp.Path, $"{w.Key}-c2")), overlapNote));
            if (w.Overlap)
                systems.Add(new(w.Key, "dtrain cluster, 2 workers x 1 thread, overlap on", () => ClusterThroughput(on, 2, 1, w, Path.Combine(tmp.Path, $"{w.Key}-c2on")), "buckets leave during backward"));
            if (w.PyTorchCell is not null)
            {
                var weak = SpecFile("weak", Batch(Threads(0), 2 * w.Spec.Training.BatchSize));
                systems.Add(new(w.Key, WeakRow, () => ClusterThroughput(weak, 2, 1, w, Path.Combine(tmp.Path, $"{w.Key}-c2weak")),
                    $"global batch {2 * w.Spec.Training.BatchSize}: {w.Spec.Training.BatchSize} rows per worker; ceiling: the whole-batch row above"));
            }
            if (w.FourWorkers)
                systems.Add(new(w.Key, "dtrain cluster, 4 workers x 1 thread", () => ClusterThroughput(cluster, 4, 1, w, Path.Combine(tmp.Path, $"{w.Key}-c4")), "4 processes on this machine's cores"));
            if (w.PyTorchCell is { } cell)
            {
                var steps = w.Key == "w2" ? "10" : "30";
                var warm = w.Key == "w2" ? "3" : "5";
                systems.Add(new(w.Key, "PyTorch, 1 process x 1 thread", () => PyTorch(python, $"single 1 {cell} {w.PyTorchHidden} {steps} {warm}"), "bench/anchors/pytorch_ddp_bench.py"));
                if (w.Key == "w1") systems.Add(new(w.Key, "PyTorch, 1 process x 2 threads", () => PyTorch(python, $"single 2 {cell} {w.PyTorchHidden} {steps} {warm}"), ""));
                systems.Add(new(w.Key, "PyTorch DDP gloo, 2 processes x 1 thread", () => PyTorch(python, $"ddp 2 {cell} {w.PyTorchHidden} {steps} {warm}"), ""));
                systems.Add(new(w.Key, WeakTorchRow, () => PyTorch(python, $"ddp-weak 2 {cell} {w.PyTorchHidden} {steps} {warm}"), $"{w.Spec.Training.BatchSize} rows per process"));
                if (w.FourWorkers && w.Key == "w1") systems.Add(new(w.Key, "PyTorch DDP gloo, 4 processes x 1 thread", () => PyTorch(python, $"ddp 4 {cell} {w.PyTorchHidden} {steps} {warm}"), ""));
            }
        }
        if (filter is not null) systems.RemoveAll(s => !filter.Any(f => s.Name.Contains(f, StringComparison.OrdinalIgnoreCase)));
        for (var round = 0; round < rounds; round++)
            foreach (var s in systems)
            {
                double v;
                try
                {
                    v = s.SamplesPerSecond();
                }
                catch (Exception e) when (e is InvalidOperationException or IOException)
                {
                    Console.WriteLine($"round {round + 1}: {s.Workload}: {s.Name}: failed: {e.Message}");
                    continue;
                }
                if (!double.IsNaN(v)) s.Rounds.Add(v);
                Console.WriteLine($"round {round + 1}: {s.Workload}: {s.Name}: {Format(v, "F1")} samples/s");
            }

        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# dtrain cluster bench ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, {rounds} round(s); median [min–max] samples/s)");
        md.AppendLine();
        if (python is null) md.AppendLine("PyTorch rows not run: python3-torch is not installed (`apt-get install -y python3-torch libopenblas0-pthread`).").AppendLine();
        var summary = new List<(string What, double Value, double Target)>();
        foreach (var w in workloads)
        {
            var rows = systems.Where(s => s.Workload == w.Key).ToList();
            double Of(string name) => rows.FirstOrDefault(s => s.Name == name)?.Median ?? double.NaN;
            var single1 = Of("dtrain, 1 process x 1 thread");
            var torch1 = Of("PyTorch, 1 process x 1 thread");
            md.AppendLine(CultureInfo.InvariantCulture, $"## {w.Title}").AppendLine();
            md.AppendLine("| system | samples/s | vs its 1-thread single process | scaling efficiency | note |");
            md.AppendLine("|---|---|---|---|---|");
            foreach (var s in rows)
            {
                var reference = s.Name.StartsWith("PyTorch", StringComparison.Ordinal) ? torch1 : single1;
                var workers = s.Name.Contains("2 workers", StringComparison.Ordinal) || s.Name.Contains("2 processes", StringComparison.Ordinal) || s.Name == HalfBatchRow ? 2
                    : s.Name.Contains("4 workers", StringComparison.Ordinal) || s.Name.Contains("4 processes", StringComparison.Ordinal) ? 4 : 0;
                var efficiency = workers > 0 ? s.Median / (workers * reference) : double.NaN;
                var range = s.Rounds.Count > 1 ? $" [{Format(s.Rounds.Min(), "F1")}–{Format(s.Rounds.Max(), "F1")}]" : "";
                md.AppendLine(CultureInfo.InvariantCulture, $"| {s.Name} | {Format(s.Median, "F1")}{range} | {Format(s.Median / reference, "F3")} | {Format(efficiency, "F3")} | {s.Note} |");
            }
            md.AppendLine();
            var two = Of("dtrain cluster, 2 workers x 1 thread");
            summary.Add(($"{w.Key}: dtrain scaling efficiency, 2 workers x 1 thread", two / (2 * single1), w.Key is "w1" or "w2" ? 0.85 : double.NaN));
            if (!double.IsNaN(torch1)) summary.Add(($"{w.Key}: PyTorch DDP scaling efficiency, 2 processes x 1 thread", Of("PyTorch DDP gloo, 2 processes x 1 thread") / (2 * torch1), double.NaN));
            summary.Add(($"{w.Key}: 2 workers x 1 thread vs a single process with 2 threads", two / Of("dtrain, 1 process x 2 threads"), w.Key == "w1" ? 0.9 : double.NaN));
            summary.Add(($"{w.Key}: machine ceiling, 2 independent 1-thread processes at once vs one alone", Of(MachineCeilingRow) / single1, double.NaN));
            var halfBatch = Of(HalfBatchRow);
            summary.Add(($"{w.Key}: data-parallel ceiling, scaling efficiency of 2 independent 1-thread processes with half the batch each", halfBatch / (2 * single1), double.NaN));
            summary.Add(($"{w.Key}: dtrain 2 workers x 1 thread vs that ceiling", two / halfBatch, double.NaN));
            var oneWorker = rows.FirstOrDefault(s => s.Name == "dtrain cluster, 1 worker x 2 threads");
            var singleTwo = rows.FirstOrDefault(s => s.Name == "dtrain, 1 process x 2 threads");
            if (oneWorker is not null && singleTwo is not null)
                summary.Add(($"{w.Key}: 1 worker vs single process, both 2 threads ({rounds}-round average)", oneWorker.Mean / singleTwo.Mean, w.Key == "w1" ? 0.97 : double.NaN));
            if (w.PyTorchCell is not null)
            {
                // Against the same 1-thread single process: the ideal is 2x its samples/s, since each replica computes a whole batch.
                summary.Add(($"{w.Key}: dtrain weak-scaling efficiency, 2 workers x 1 thread, whole batch each", Of(WeakRow) / (2 * single1), double.NaN));
                if (!double.IsNaN(torch1)) summary.Add(($"{w.Key}: PyTorch DDP weak-scaling efficiency, 2 processes x 1 thread, whole batch each", Of(WeakTorchRow) / (2 * torch1), double.NaN));
                summary.Add(($"{w.Key}: dtrain weak scaling vs the machine ceiling (2 independent processes, whole batch each)", Of(WeakRow) / (2 * Of(MachineCeilingRow)), double.NaN));
            }
            if (w.Overlap) summary.Add(($"{w.Key}: 2 workers, overlap on vs auto", Of("dtrain cluster, 2 workers x 1 thread, overlap on") / two, double.NaN));
            if (w.FourWorkers) summary.Add(($"{w.Key}: dtrain scaling efficiency, 4 workers x 1 thread", Of("dtrain cluster, 4 workers x 1 thread") / (4 * single1), double.NaN));
        }
        md.AppendLine("## Ratios and targets (issue 10)").AppendLine();
        md.AppendLine("| ratio | measured | target | met |");
        md.AppendLine("|---|---|---|---|");
        foreach (var (what, value, target) in summary)
            md.AppendLine(CultureInfo.InvariantCulture, $"| {what} | {Format(value, "F3")} | {(double.IsNaN(target) ? "" : ">= " + target.ToString("0.00", CultureInfo.InvariantCulture))} | {(double.IsNaN(target) || double.IsNaN(value) ? "" : value >= target ? "yes" : "no")} |");
        Console.WriteLine();
        Console.WriteLine(md.ToString());
        File.WriteAllText(report, md.ToString());
        Console.WriteLine($"report written to {Path.GetFullPath(report)}");
        return 0;
    }

    static string Format(double v, string format) => double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>Two <see cref="SingleProcess"/> runs started together; the mean of their samples/s.</summary>
    static double TwoAtOnce(string specPath, Workload w)
    {
        var runs = Enumerable.Range(0, 2).Select(_ => Task.Run(() => SingleProcess(specPath, w))).ToArray();
        return runs.Select(r => r.GetAwaiter().GetResult()).Average();
    }

    /// <summary>Samples/s of `dtrain train` on <paramref name="specPath"/> in a fresh bench process with dtrain's process settings (`train SPEC WARMUP`).</summary>
    static double SingleProcess(string specPath, Workload w)
    {
        var (exe, prefix) = CollectiveBench.SelfCommand();
        var psi = new ProcessStartInfo(exe, prefix);
        NativeAllocator.Preload(psi);
        psi.Environment["DOTNET_TieredCompilation"] = "0";
        foreach (var a in new[] { "train", specPath, w.Warmup.ToString(CultureInfo.InvariantCulture) }) psi.ArgumentList.Add(a);
        var (value, exitCode, error) = RunForValue(psi, "samples_per_s=");
        if (exitCode != 0 || value is null) throw new InvalidOperationException($"train {specPath} failed ({exitCode}): {error}");
        return value.Value;
    }

    /// <summary>Samples/s of one W1 loop run alone in a fresh bench process (`loop NAME 2 warmup timed`).</summary>
    internal static double Loop(string name)
    {
        var (exe, prefix) = CollectiveBench.SelfCommand();
        var psi = new ProcessStartInfo(exe, prefix);
        // A user's plain loop runs on the .NET and glibc defaults; dtrain's processes start on tcmalloc
        // (NativeAllocator) without tiered compilation (the dtrain and dtrain-worker projects): the other loops too.
        if (name != "plain")
        {
            NativeAllocator.Preload(psi);
            psi.Environment["DOTNET_TieredCompilation"] = "0";
        }
        else
        {
            psi.Environment.Remove("LD_PRELOAD");
            psi.Environment.Remove("DOTNET_TieredCompilation");
        }
        foreach (var a in new[] { "loop", name, "2", Warmup.ToString(CultureInfo.InvariantCulture), Timed.ToString(CultureInfo.InvariantCulture) }) psi.ArgumentList.Add(a);
        var (seconds, exitCode, error) = RunForValue(psi, "seconds_per_step=");
        if (exitCode != 0 || seconds is null) throw new InvalidOperationException($"loop {name} failed ({exitCode}): {error}");
        return 32 / seconds.Value;
    }

    /// <summary>Runs a process to its end; the number after <paramref name="key"/> on its standard output (null when absent), its exit code and its last error line.</summary>
    static (double? Value, int ExitCode, string Error) RunForValue(ProcessStartInfo psi, string key)
    {
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        psi.UseShellExecute = false;
        using var p = Process.Start(psi)!;
        var error = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        var line = output.Split('\n').FirstOrDefault(l => l.Contains(key, StringComparison.Ordinal));
        double? value = null;
        if (line is not null)
        {
            var rest = line[(line.IndexOf(key, StringComparison.Ordinal) + key.Length)..].Trim();
            value = double.Parse(rest.Split(' ')[0], CultureInfo.InvariantCulture);
        }
        return (value, p.ExitCode, error.GetAwaiter().GetResult().Split('\n').LastOrDefault(l => l.Length > 0) ?? "");
    }

    /// <summary>Samples/s between the end of the warm-up steps and the last step, from the coordinator's step events.</summary>
    static double ClusterThroughput(string specPath, int workers, int threads, Workload w, string logs)
    {
        using var cluster = LocalCluster.Start(workers, 0, threads, logs, TimeSpan.FromMinutes(2));
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var batch = JobSpecSerializer.Load(specPath).Training.BatchSize;
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(specPath), workers)).JobId;
        double start = double.NaN, end = double.NaN, compute = 0, reduce = 0;
        FollowToSuccess(client, id, logs, s =>
        {
            if (s.Step == w.Warmup) start = s.ElapsedSeconds;
            if (s.Step == w.Warmup + w.Timed) end = s.ElapsedSeconds;
            if (s.Step > w.Warmup && s.Step <= w.Warmup + w.Timed)
            {
                compute += s.ComputeMs;
                reduce += s.AllreduceMs;
            }
        });
        // The step events' split (slowest replica): what a cost model is calibrated on (docs/scaling.md).
        Console.WriteLine($"  {w.Key} {workers} worker(s) x {threads}: per step compute {compute / w.Timed:F1} ms, all-reduce wait {reduce / w.Timed:F1} ms");
        return w.Timed * batch / (end - start);
    }

    /// <summary>Watches a job to its end, handing every step event to <paramref name="onStep"/>; throws unless it succeeded.</summary>
    internal static void FollowToSuccess(Jobs.JobsClient client, string id, string logs, Action<StepEvent> onStep)
    {
        using var call = client.Watch(new WatchJobRequest { JobId = id });
        JobInfo? last = null;
        while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
        {
            var e = call.ResponseStream.Current;
            if (e.KindCase == JobEvent.KindOneofCase.Step) onStep(e.Step);
            if (e.KindCase == JobEvent.KindOneofCase.State) last = e.State;
        }
        if (last?.State != JobState.Succeeded) throw new InvalidOperationException($"benchmark job {last?.State}: {last?.Message}; logs in {logs}");
    }

    const string Python = "/usr/bin/python3";

    /// <summary>The anchor script when Debian's python3-torch can be imported, else null.</summary>
    static string? PyTorchAvailable()
    {
        try
        {
            using var probe = Process.Start(new ProcessStartInfo(Python, ["-c", "import torch"]) { RedirectStandardError = true, UseShellExecute = false });
            if (probe is null || !probe.WaitForExit(60_000) || probe.ExitCode != 0) return null;
        }
        catch (global::System.ComponentModel.Win32Exception)
        {
            return null;
        }
        var root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
        return Path.Combine(root, "bench", "anchors", "pytorch_ddp_bench.py");
    }

    static double PyTorch(string? script, string args)
    {
        if (script is null) return double.NaN;
        var psi = new ProcessStartInfo(Python);
        psi.ArgumentList.Add(script);
        foreach (var a in args.Split(' ')) psi.ArgumentList.Add(a);
        // As in the anchor's instructions: Debian's OpenBLAS tuned for this CPU, one BLAS thread per process.
        psi.Environment.Remove("OPENBLAS_CORETYPE");
        psi.Environment.Remove("OPENBLAS_L2_SIZE");
        psi.Environment["OPENBLAS_NUM_THREADS"] = args.StartsWith("single 2", StringComparison.Ordinal) ? "2" : "1";
        var (samplesPerSecond, _, error) = RunForValue(psi, "samples_per_s=");
        return samplesPerSecond ?? throw new InvalidOperationException($"pytorch_ddp_bench.py {args} failed: {error}");
    }
}

/// <summary>A scratch directory removed at the end of a benchmark.</summary>
sealed class TempDir : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("dtrain-bench-").FullName;
    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
