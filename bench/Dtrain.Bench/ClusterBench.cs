using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dtrain.Cli;
using Dtrain.Runtime;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;

namespace Dtrain.Bench;

/// <summary>
/// W1 throughput side by side in one run: plain single-process TorchSharp (2 threads), the engine alone, the
/// cluster with 1 worker (2 threads) and with 2 workers (1 thread each) on loopback, and PyTorch DDP over gloo
/// (bench/anchors/pytorch_ddp_bench.py) when Debian's python3-torch is installed.
/// </summary>
public static class ClusterBench
{
    // A long warm-up: the first steps of a fresh process are slow while libtorch pages in and builds its kernels.
    const int Embed = 64, Hidden = 256, Layers = 2, Batch = 32, Seq = 64, Warmup = 20, Timed = 40;

    public static int Run(string root, int rounds = 2)
    {
        var rows = new List<(string System, double SamplesPerSecond, string Note)>();
        using var tmp = new TempDir();
        var data = Path.Combine(tmp.Path, "w1.txt");
        // Random printable characters: the vocabulary is ~96 like W1's, and throughput does not depend on content.
        var rng = new Random(1);
        var sb = new StringBuilder();
        for (var i = 0; i < 400_000; i++) sb.Append((char)(32 + rng.Next(95)));
        File.WriteAllText(data, sb.ToString());
        var spec = new JobSpec
        {
            Name = "w1",
            Data = new DataSpec { Format = DataFormats.Text, Train = data, ValidationFraction = 0.01 },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = Layers, EmbeddingDim = Embed, HiddenSize = Hidden, GateBias = 0 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = Batch, SeqLen = Seq, LmSampling = LmSamplingKinds.Random, MaxSteps = Warmup + Timed, ClipNorm = 1.0, EvalInterval = 0, CheckpointInterval = 0 },
        };
        var specPath = Path.Combine(tmp.Path, "w1.json");
        File.WriteAllText(specPath, JobSpecSerializer.Serialize(spec));

        // Every system runs in a fresh process of its own, in the same order each round; rounds are averaged so
        // drift on a noisy machine does not favour one side.
        var systems = new (string Name, Func<double> SamplesPerSecond, string Note)[]
        {
            ("plain TorchSharp, 1 process x 2 threads", () => Loop("plain"), "reference: a hand-written loop, default glibc malloc"),
            ("plain TorchSharp, dtrain's process settings", () => Loop("plain-tuned"), "the same loop on tcmalloc, tiered compilation off"),
            ("dtrain engine (`dtrain train`), 1 process x 2 threads", () => Loop("engine"), ""),
            ("dtrain cluster, 1 worker x 2 threads", () => ClusterThroughput(specPath, 1, 2, Path.Combine(tmp.Path, "cluster-1")), "coordinator + worker processes, loopback"),
            ("dtrain cluster, 2 workers x 1 thread", () => ClusterThroughput(specPath, 2, 1, Path.Combine(tmp.Path, "cluster-2")), "ring all-reduce over gRPC"),
        };
        var measured = systems.Select(_ => new List<double>()).ToArray();
        for (var round = 0; round < rounds; round++)
            for (var i = 0; i < systems.Length; i++)
            {
                measured[i].Add(systems[i].SamplesPerSecond());
                Console.WriteLine($"round {round + 1}: {systems[i].Name}: {measured[i][^1]:F1} samples/s");
            }
        for (var i = 0; i < systems.Length; i++)
            rows.Add((systems[i].Name, measured[i].Average(), (systems[i].Note + $" (rounds: {string.Join(", ", measured[i].Select(v => v.ToString("F1", CultureInfo.InvariantCulture)))})").Trim()));
        var plain = rows[0].SamplesPerSecond;
        var tuned = rows[1].SamplesPerSecond;
        var anchor = Path.Combine(root, "bench", "anchors", "pytorch_ddp_bench.py");
        foreach (var args in new[] { "single 2", "ddp 2" })
        {
            var (sps, note) = PyTorch(anchor, args);
            rows.Add(($"PyTorch {args.Replace("single 2", "1 process x 2 threads").Replace("ddp 2", "DDP gloo, 2 processes x 1 thread")}", sps, note));
        }

        Console.WriteLine();
        Console.WriteLine("W1: char LSTM LM, vocab 96, embedding 64, hidden 256, 2 layers, batch 32 x 64, Adam 2e-3, clip 1.0; loopback, this machine");
        Console.WriteLine("| system | samples/s | vs plain TorchSharp | vs plain, same settings | note |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (var r in rows)
            Console.WriteLine($"| {r.System} | {Format(r.SamplesPerSecond, "F1")} | {Format(r.SamplesPerSecond / plain, "F3")} | {Format(r.SamplesPerSecond / tuned, "F3")} | {r.Note} |");
        return 0;
    }

    static string Format(double v, string format) => double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>Samples/s of one W1 loop run alone in a fresh bench process (`loop NAME 2 warmup timed`).</summary>
    static double Loop(string name)
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
        return Batch / seconds.Value;
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
        double? value = line is null ? null : double.Parse(line[(line.IndexOf(key, StringComparison.Ordinal) + key.Length)..].Trim(), CultureInfo.InvariantCulture);
        return (value, p.ExitCode, error.GetAwaiter().GetResult().Split('\n').LastOrDefault(l => l.Length > 0) ?? "");
    }

    /// <summary>Samples/s between the end of the warm-up steps and the last step, from the coordinator's step events.</summary>
    static double ClusterThroughput(string specPath, int workers, int threads, string logs)
    {
        using var cluster = LocalCluster.Start(workers, 0, threads, logs, TimeSpan.FromMinutes(2));
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(specPath), workers)).JobId;
        double start = double.NaN, end = double.NaN;
        FollowToSuccess(client, id, logs, s =>
        {
            if (s.Step == Warmup) start = s.ElapsedSeconds;
            if (s.Step == Warmup + Timed) end = s.ElapsedSeconds;
        });
        return Timed * Batch / (end - start);
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

    static (double SamplesPerSecond, string Note) PyTorch(string script, string args)
    {
        const string python = "/usr/bin/python3";
        var probe = Process.Start(new ProcessStartInfo(python, ["-c", "import torch"]) { RedirectStandardError = true, UseShellExecute = false });
        if (probe is null || !probe.WaitForExit(60_000) || probe.ExitCode != 0)
            return (double.NaN, "not run: apt-get install python3-torch libopenblas0-pthread");
        var psi = new ProcessStartInfo(python);
        psi.ArgumentList.Add(script);
        foreach (var a in args.Split(' ')) psi.ArgumentList.Add(a);
        // As in the anchor's instructions: Debian's OpenBLAS tuned for this CPU, one BLAS thread per process.
        psi.Environment.Remove("OPENBLAS_CORETYPE");
        psi.Environment.Remove("OPENBLAS_L2_SIZE");
        psi.Environment["OPENBLAS_NUM_THREADS"] = "1";
        var (samplesPerSecond, _, error) = RunForValue(psi, "samples_per_s=");
        return samplesPerSecond is { } v ? (v, "bench/anchors/pytorch_ddp_bench.py " + args) : (double.NaN, "failed: " + error);
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
