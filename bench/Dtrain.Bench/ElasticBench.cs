using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;

namespace Dtrain.Bench;

/// <summary>
/// Elastic data-parallel jobs on worker processes on loopback, with the coordinator's default timeouts: time from a
/// worker's death (kill -9) or hang (SIGSTOP) to the first step committed after it, steps lost per failure (beyond
/// the step in flight), and throughput before and after a worker joins.
/// </summary>
public static class ElasticBench
{
    public static int Run()
    {
        using var tmp = new TempDir();
        // DTRAIN_BENCH_LOGS=DIR keeps the processes' logs there (they go with the temporary directory otherwise).
        var logs = Environment.GetEnvironmentVariable("DTRAIN_BENCH_LOGS") is { Length: > 0 } keep ? keep : tmp.Path;
        var data = Path.Combine(tmp.Path, "w.txt");
        var rng = new Random(1);
        var sb = new StringBuilder();
        for (var i = 0; i < 200_000; i++) sb.Append((char)(32 + rng.Next(95)));
        File.WriteAllText(data, sb.ToString());
        var spec = new JobSpec
        {
            Name = "elastic",
            Data = new DataSpec { Format = DataFormats.Text, Train = data, ValidationFraction = 0.01 },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 2, EmbeddingDim = 32, HiddenSize = 128 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = 24, SeqLen = 32, LmSampling = LmSamplingKinds.Random, MaxSteps = 100_000, EvalInterval = 0, CheckpointInterval = 0, Threads = 1 },
        };
        var specPath = Path.Combine(tmp.Path, "elastic.json");
        File.WriteAllText(specPath, JobSpecSerializer.Serialize(spec));
        Console.WriteLine("model: char LSTM, 2 layers x 128 hidden, batch 24 x 32, 1 torch thread per worker; coordinator defaults (heartbeat 1 s, worker timeout 7 s)");

        var rows = new List<string>();
        foreach (var (name, signal) in new[] { ("kill -9 (process dies)", "KILL"), ("SIGSTOP (process hangs)", "STOP") })
        {
            using var cluster = LocalCluster.Start(3, 0, 1, Path.Combine(logs, signal), TimeSpan.FromMinutes(2));
            using var channel = Remote.Channel(cluster.Address);
            var client = new Jobs.JobsClient(channel);
            var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(specPath), 3)).JobId;
            var before = WaitForStep(client, id, 60);
            var pid = cluster.WorkerProcessId(1);
            var atFault = client.Get(new GetJobRequest { JobId = id }).Step;
            var clock = Stopwatch.StartNew();
            Process.Start("kill", [$"-{signal}", pid.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
            JobInfo info;
            do
            {
                Thread.Sleep(5);
                info = client.Get(new GetJobRequest { JobId = id });
            }
            while (info.Generation < 2 || info.Step <= atFault);
            // First step committed by the new generation.
            var ledger = client.Ledger(new GetJobRequest { JobId = id });
            var firstNew = ledger.Steps.Where(s => s.Generation >= 2).Min(s => s.Step);
            while (client.Ledger(new GetJobRequest { JobId = id }).Steps.All(s => s.Step != firstNew)) Thread.Sleep(5);
            var recovery = clock.Elapsed.TotalSeconds;
            var lastOld = ledger.Steps.Where(s => s.Generation < 2).Max(s => s.Step);
            // Lost: steps committed (seen by the coordinator) before the fault that the new generation had to redo.
            var lost = Math.Max(0, atFault - firstNew);
            var rate = StepsPerSecond(client, id, 40);
            client.Cancel(new CancelJobRequest { JobId = id });
            if (signal == "STOP") Process.Start("kill", ["-CONT", pid.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
            rows.Add($"| {name} | {atFault} | {lastOld + 1} | {firstNew + 1} | {lost} | {recovery:F2} s | {before:F1} → {rate:F1} |");
            Console.WriteLine(rows[^1]);
        }

        {
            using var cluster = LocalCluster.Start(2, 0, 1, Path.Combine(logs, "join"), TimeSpan.FromMinutes(2));
            using var channel = Remote.Channel(cluster.Address);
            var client = new Jobs.JobsClient(channel);
            var request = JobCommands.BuildSubmit(client, new FileInfo(specPath), 2);
            request.MaxWorkers = 3;
            var id = client.Submit(request).JobId;
            var before = WaitForStep(client, id, 60);
            var beforeRate = StepsPerSecond(client, id, 60);
            var clock = Stopwatch.StartNew();
            cluster.AddWorker();
            JobInfo info;
            do
            {
                Thread.Sleep(5);
                info = client.Get(new GetJobRequest { JobId = id });
            }
            while (info.Generation < 2);
            var admitted = clock.Elapsed.TotalSeconds;
            var afterRate = StepsPerSecond(client, id, 60);
            client.Cancel(new CancelJobRequest { JobId = id });
            rows.Add($"| join (2 → 3 workers) | | | | 0 | admitted {admitted:F2} s after start | {beforeRate:F1} → {afterRate:F1} ({afterRate / beforeRate:F2}x) |");
            Console.WriteLine(rows[^1]);
        }

        Console.WriteLine();
        Console.WriteLine("| event | step seen at the fault | last step of generation 1 | first step of generation 2 | steps lost | fault → first step committed after it | steps/s before → after |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        foreach (var r in rows) Console.WriteLine(r);
        return 0;
    }

    /// <summary>Waits for the job to pass <paramref name="step"/>; returns its steps/s over the last 20 steps.</summary>
    static double WaitForStep(Jobs.JobsClient client, string id, long step)
    {
        while (client.Get(new GetJobRequest { JobId = id }).Step < step - 20) Thread.Sleep(20);
        return StepsPerSecond(client, id, 20);
    }

    static double StepsPerSecond(Jobs.JobsClient client, string id, int steps)
    {
        var start = client.Get(new GetJobRequest { JobId = id }).Step;
        var clock = Stopwatch.StartNew();
        while (client.Get(new GetJobRequest { JobId = id }).Step < start + steps) Thread.Sleep(10);
        return steps / clock.Elapsed.TotalSeconds;
    }
}
