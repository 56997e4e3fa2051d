using System.Globalization;
using System.Text;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;

namespace Dtrain.Bench;

/// <summary>
/// Pipeline parallelism on worker processes (loopback, 1 torch thread per stage): throughput, the measured bubble
/// against the bound (K−1)/(M+K−1), each stage's compute time, and each stage worker's peak resident memory against
/// the whole model on one worker (K = 1, the same machinery). <c>--transports grpc,shm,tcp</c> runs every layout once per
/// worker transport (DTRAIN_Worker__Transport: how the stage links travel), side by side; <c>--layouts 2x4,4x8</c>
/// picks the K x M layouts (K = 1 is always measured first, as the baseline).
/// </summary>
public static class PipelineBench
{
    const int Layers = 8, Hidden = 256, Embed = 64, Batch = 32, Seq = 32, Warmup = 3, Timed = 8;

    const string Usage = "dtrain-bench pipeline [--transports grpc,shm,tcp] [--layouts 2x4,4x8]";

    public static int Run(string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--transports", "--layouts");
        if (BenchArgs.Positional(args).FirstOrDefault() is { } stray)
            throw new ArgumentException($"unexpected argument \"{stray}\" (usage: {Usage})");
        string? Option(string name) => BenchArgs.Option(args, name);
        var transports = Option("--transports")?.Split(',', StringSplitOptions.RemoveEmptyEntries) ?? [""];
        if (transports.FirstOrDefault(t => t != "" && !Collective.DataTransports.TryParse(t, out _)) is { } badTransport)
            throw new ArgumentException($"--transports: \"{badTransport}\" is not a worker transport (auto, shm, tcp or grpc; usage: {Usage})");
        var layouts = Option("--layouts") is { } l
            ? [(1, 1), .. l.Split(',').Select(Layout)]
            : new[] { (1, 1), (2, 1), (2, 4), (2, 8), (4, 1), (4, 4), (4, 8) };
        var tmp = Directory.CreateTempSubdirectory("dtrain-pipebench-").FullName;
        try
        {
            var data = Path.Combine(tmp, "text.txt");
            var rng = new Random(1);
            var sb = new StringBuilder();
            for (var i = 0; i < 200_000; i++) sb.Append((char)(32 + rng.Next(95)));
            File.WriteAllText(data, sb.ToString());
            var rows = new List<string>();
            var withTransport = transports.Length > 1 || transports[0] != "";
            // Layouts outer, transports inner: the transports of one layout run back to back (a shared machine drifts).
            var baselines = new Dictionary<string, double>();
            foreach (var (k, m) in layouts)
                foreach (var transport in transports)
                {
                    var r = Measure(tmp, data, k, m, transport);
                    if (!baselines.TryGetValue(transport, out var baseline)) baselines[transport] = baseline = r.SamplesPerSecond;
                    var bound = (k - 1.0) / (m + k - 1);
                    rows.Add($"| {(withTransport ? transport + " | " : "")}{k} | {m} | {r.SamplesPerSecond:F2} | {r.SamplesPerSecond / baseline:F2} | {r.Bubble:P0} | {bound:P0} | {string.Join(" / ", r.StageMs.Select(v => v.ToString("F0", CultureInfo.InvariantCulture)))} | {string.Join(" / ", r.PeakMb.Select(v => v.ToString("F0", CultureInfo.InvariantCulture)))} |");
                    Console.WriteLine(rows[^1]);
                }
            Console.WriteLine();
            Console.WriteLine($"LSTM LM, {Layers} layers x hidden {Hidden}, embedding {Embed}, batch {Batch} x {Seq}, Adam; 1 torch thread per stage, worker processes on loopback, {Environment.ProcessorCount} cores");
            Console.WriteLine($"| {(withTransport ? "transport | " : "")}K | M | samples/s | vs K=1 | bubble (measured) | bubble bound (K-1)/(M+K-1) | stage compute ms | peak RSS per stage MB |");
            Console.WriteLine($"|{(withTransport ? "---|" : "")}---|---|---|---|---|---|---|---|");
            foreach (var r in rows) Console.WriteLine(r);
            return 0;
        }
        finally
        {
            try { Directory.Delete(tmp, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>One K x M layout of --layouts: K stages (1..Layers) and M micro-batches (1..Batch, dividing it).</summary>
    static (int K, int M) Layout(string text)
    {
        var parts = text.Split('x');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var k) || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var m))
            throw new ArgumentException($"--layouts: \"{text}\" is not K x M, such as 2x4 (usage: {Usage})");
        if (k < 1 || k > Layers) throw new ArgumentException($"--layouts {text}: {k} stages, the model has {Layers} layers (1..{Layers})");
        if (m < 1 || m > Batch || Batch % m != 0) throw new ArgumentException($"--layouts {text}: {m} micro-batches must divide the batch of {Batch}");
        return (k, m);
    }

    sealed record Result(double SamplesPerSecond, double Bubble, double[] StageMs, double[] PeakMb);

    static Result Measure(string tmp, string data, int k, int m, string transport)
    {
        var spec = new JobSpec
        {
            Name = $"pipe-k{k}-m{m}{(transport == "" ? "" : "-" + transport)}",
            Data = new DataSpec { Format = DataFormats.Text, Train = data, ValidationFraction = 0.01 },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = Layers, EmbeddingDim = Embed, HiddenSize = Hidden },
            Training = new TrainingSpec { BatchSize = Batch, SeqLen = Seq, LmSampling = LmSamplingKinds.Random, MaxSteps = Warmup + Timed, EvalInterval = 0, CheckpointInterval = 0, Threads = 1 },
            Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = k, Microbatches = m, Schedule = "1f1b" } },
        };
        var specPath = Path.Combine(tmp, spec.Name + ".json");
        File.WriteAllText(specPath, JobSpecSerializer.Serialize(spec));
        using var cluster = LocalCluster.Start(k, 0, 1, Path.Combine(tmp, spec.Name), TimeSpan.FromMinutes(2),
            transport == "" ? null : new Dictionary<string, string> { ["DTRAIN_Worker__Transport"] = transport });
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(specPath), k)).JobId;
        double start = double.NaN, end = double.NaN;
        var bubbles = new List<double>();
        var stageMs = new double[k];
        ClusterBench.FollowToSuccess(client, id, cluster.LogDir, s =>
        {
            if (s.Step == Warmup) start = s.ElapsedSeconds;
            if (s.Step == Warmup + Timed) end = s.ElapsedSeconds;
            if (s.Step <= Warmup) return;
            bubbles.Add(s.Bubble);
            for (var i = 0; i < k && i < s.StageComputeMs.Count; i++) stageMs[i] += s.StageComputeMs[i] / Timed;
        });
        var peak = Enumerable.Range(0, k).Select(i => PeakResidentMb(cluster.WorkerProcessId(i))).ToArray();
        return new Result(Timed * Batch / (end - start), bubbles.Average(), stageMs, peak);
    }

    /// <summary>VmHWM of a process: its peak resident set, in MB.</summary>
    static double PeakResidentMb(int pid)
    {
        var line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
    }
}
