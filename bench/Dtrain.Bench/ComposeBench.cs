using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Specs;
using Grpc.Core.Interceptors;

namespace Dtrain.Bench;

/// <summary>
/// <c>dtrain-bench compose-allreduce</c>: the same W1 and W2 jobs (2 workers x 1 thread, a fixed number of steps) on a
/// 2-worker docker compose cluster (deploy/docker-compose.yml, the image scripts/image.sh builds) and on the loopback
/// cluster (`dtrain cluster`'s processes), each with the data plane workers choose by default (auto: shared memory on
/// one host, which compose workers get through their shared /dev/shm volume) and with Worker:Transport=tcp (plain TCP on
/// the loopback cluster, which has no TLS; TCP inside mutual TLS with sealed records between the compose containers, as
/// between hosts). Reads the coordinator's step events: per timed step the compute time and the all-reduce wait of the
/// slowest replica; the table puts the all-reduce ms per step of the two clusters side by side, with the data plane the
/// workers' logs name for each job.
/// </summary>
public static class ComposeBench
{
    const string Usage = "dtrain-bench compose-allreduce [w1,w2] [--warmup N] [--steps N] [--clusters loopback,compose] [--transports auto,tcp] [--image TAG] [--report FILE]";

    sealed record Workload(string Key, string Title, int Hidden, int Warmup, int Timed);

    sealed record Result(string Workload, string Cluster, string Transport, string DataPlane, double ComputeMs, double AllreduceMs, double SamplesPerSecond);

    /// <summary>One cluster to run jobs on: its address, a jobs client, and the text of its workers' logs.</summary>
    interface IBenchCluster : IDisposable
    {
        Jobs.JobsClient Client { get; }

        string WorkerLogs();
    }

    public static int Run(string root, string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--warmup", "--steps", "--clusters", "--transports", "--image", "--report");
        var positional = BenchArgs.Positional(args);
        if (positional.Count > 1) throw new ArgumentException($"unexpected argument \"{positional[1]}\" (usage: {Usage})");
        var only = positional.FirstOrDefault()?.Split(',') ?? ["w1", "w2"];
        if (only.FirstOrDefault(k => k is not ("w1" or "w2")) is { } unknown) throw new ArgumentException($"unknown workload \"{unknown}\": w1 or w2 (usage: {Usage})");
        var steps = BenchArgs.Option(args, "--steps") is { } s ? BenchArgs.Number("--steps", s, 1, 10_000, Usage) : (int?)null;
        var warmup = BenchArgs.Option(args, "--warmup") is { } wu ? BenchArgs.Number("--warmup", wu, 1, 10_000, Usage) : (int?)null;
        var clusters = (BenchArgs.Option(args, "--clusters") ?? "loopback,compose").Split(',');
        if (clusters.FirstOrDefault(c => c is not ("loopback" or "compose")) is { } badCluster) throw new ArgumentException($"--clusters: \"{badCluster}\" is not loopback or compose (usage: {Usage})");
        var transports = (BenchArgs.Option(args, "--transports") ?? "auto,tcp").Split(',');
        if (transports.FirstOrDefault(t => t is not ("auto" or "tcp")) is { } badTransport) throw new ArgumentException($"--transports: \"{badTransport}\" is not auto or tcp (usage: {Usage})");
        var image = BenchArgs.Option(args, "--image");
        var report = BenchArgs.Option(args, "--report") ?? "bench-compose-allreduce.md";

        // W1 and W2 as `dtrain-bench cluster` defines them (docs/benchmarks.md), fewer steps: every job starts a cluster.
        var workloads = new List<Workload>
        {
            new("w1", "W1: char LSTM LM, embedding 64, hidden 256, 2 layers, batch 32 x 64, Adam (0.89 M parameters)", 256, warmup ?? 10, steps ?? 40),
            new("w2", "W2: W1 with hidden 1024 (12.96 M parameters)", 1024, warmup ?? 3, steps ?? 10),
        }.Where(w => only.Contains(w.Key)).ToList();

        using var tmp = new TempDir();
        var text = Path.Combine(tmp.Path, "random.txt");
        var rng = new Random(1);
        var sb = new StringBuilder();
        for (var i = 0; i < 400_000; i++) sb.Append((char)(32 + rng.Next(95)));
        File.WriteAllText(text, sb.ToString());
        var specs = workloads.ToDictionary(w => w.Key, w =>
        {
            var path = Path.Combine(tmp.Path, $"{w.Key}.json");
            File.WriteAllText(path, JobSpecSerializer.Serialize(new JobSpec
            {
                Name = $"bench-{w.Key}",
                Data = new DataSpec { Format = DataFormats.Text, Train = text, ValidationFraction = 0.01 },
                Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 2, EmbeddingDim = 64, HiddenSize = w.Hidden, GateBias = 0 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
                Training = new TrainingSpec
                {
                    BatchSize = 32, SeqLen = 64, LmSampling = LmSamplingKinds.Random, ClipNorm = 1.0, EvalInterval = 0, CheckpointInterval = 0,
                    MaxSteps = w.Warmup + w.Timed,
                },
            }));
            return path;
        });

        if (clusters.Contains("compose"))
        {
            if (Docker(root, null, TimeSpan.FromSeconds(30), "version").ExitCode != 0)
                throw new BenchFailureException("the compose rows need a running Docker engine (scripts/docker-setup.sh installs and starts one); `--clusters loopback` runs the rest");
            if (image is null)
            {
                image = "dtrain:bench";
                Console.WriteLine($"building {image} with scripts/image.sh (give --image TAG to use an image already built)...");
                var built = Run(root, "bash", [Path.Combine(root, "scripts", "image.sh")], new Dictionary<string, string> { ["DTRAIN_IMAGE"] = image }, TimeSpan.FromMinutes(30));
                if (built.ExitCode != 0) throw new BenchFailureException($"scripts/image.sh failed ({built.ExitCode}): {Last(built.Stderr)}");
            }
        }

        var results = new List<Result>();
        foreach (var cluster in clusters)
            foreach (var transport in transports)
            {
                var label = $"{cluster}, Worker:Transport={transport}";
                Console.WriteLine($"{label}: starting 2 workers x 1 thread...");
                using var c = cluster == "loopback"
                    ? (IBenchCluster)new Loopback(Path.Combine(tmp.Path, $"loopback-{transport}"), transport)
                    : new Compose(root, image!, Path.Combine(tmp.Path, $"compose-{transport}"), transport);
                foreach (var w in workloads)
                {
                    var r = RunJob(c, specs[w.Key], w, cluster, transport);
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {w.Key}: {r.DataPlane}: compute {r.ComputeMs:F1} ms/step, all-reduce {r.AllreduceMs:F1} ms/step, {r.SamplesPerSecond:F1} samples/s"));
                    results.Add(r);
                }
            }

        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# compose vs loopback cluster, all-reduce per step ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, load average {LoadAverage()})");
        md.AppendLine();
        md.AppendLine("2 workers x 1 thread (compose: cpus 1 each); per timed step the slowest replica's compute and all-reduce wait from the coordinator's step events, averaged over the timed steps.");
        md.AppendLine();
        md.AppendLine("| workload | steps (warm-up + timed) | cluster | Worker:Transport | data plane (workers' logs) | compute ms/step | all-reduce ms/step | samples/s |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var w in workloads)
            foreach (var r in results.Where(r => r.Workload == w.Key))
                md.AppendLine(CultureInfo.InvariantCulture, $"| {w.Key} | {w.Warmup} + {w.Timed} | {r.Cluster} | {r.Transport} | {r.DataPlane} | {r.ComputeMs:F1} | {r.AllreduceMs:F1} | {r.SamplesPerSecond:F1} |");
        md.AppendLine();
        md.AppendLine("| workload | Worker:Transport | all-reduce ms/step, compose / loopback |");
        md.AppendLine("|---|---|---|");
        foreach (var w in workloads)
            foreach (var transport in transports)
            {
                var loopback = results.FirstOrDefault(r => r.Workload == w.Key && r.Cluster == "loopback" && r.Transport == transport);
                var compose = results.FirstOrDefault(r => r.Workload == w.Key && r.Cluster == "compose" && r.Transport == transport);
                if (loopback is null || compose is null) continue;
                md.AppendLine(CultureInfo.InvariantCulture, $"| {w.Key} | {transport} | {compose.AllreduceMs:F1} / {loopback.AllreduceMs:F1} = {compose.AllreduceMs / loopback.AllreduceMs:F2} |");
            }
        foreach (var w in workloads) md.AppendLine().AppendLine(CultureInfo.InvariantCulture, $"{w.Key}: {w.Title}");
        Console.WriteLine();
        Console.WriteLine(md.ToString());
        File.WriteAllText(report, md.ToString());
        Console.WriteLine($"report written to {Path.GetFullPath(report)}");
        return 0;
    }

    /// <summary>Submits the job on 2 workers, follows it to its end; the timed steps' mean compute and all-reduce wait, samples/s, and the data plane its workers logged.</summary>
    static Result RunJob(IBenchCluster cluster, string specPath, Workload w, string clusterName, string transport)
    {
        var client = cluster.Client;
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(specPath), 2)).JobId;
        double start = double.NaN, end = double.NaN, compute = 0, reduce = 0;
        ClusterBench.FollowToSuccess(client, id, $"the {clusterName} cluster's logs", e =>
        {
            if (e.Step == w.Warmup) start = e.ElapsedSeconds;
            if (e.Step == w.Warmup + w.Timed) end = e.ElapsedSeconds;
            if (e.Step > w.Warmup && e.Step <= w.Warmup + w.Timed)
            {
                compute += e.ComputeMs;
                reduce += e.AllreduceMs;
            }
        });
        return new Result(w.Key, clusterName, transport, DataPlaneOf(cluster.WorkerLogs(), id), compute / w.Timed, reduce / w.Timed, w.Timed * 32 / (end - start));
    }

    /// <summary>
    /// What the workers logged for job <paramref name="jobId"/>: "shared-memory group" when they summed through it, else
    /// the ring links' kinds ("shared memory", "tcp", "tcp+tls"), or "?" when the logs do not say.
    /// </summary>
    internal static string DataPlaneOf(string logs, string jobId)
    {
        var kinds = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var line in logs.Split('\n'))
        {
            if (line.Contains($"all-reduce of job {jobId} generation", StringComparison.Ordinal) && line.Contains("shared-memory group of", StringComparison.Ordinal)) return "shared-memory group";
            var job = line.IndexOf($" (job {jobId} generation", StringComparison.Ordinal);
            var ring = line.IndexOf("ring ", StringComparison.Ordinal);
            if (job < 0 || ring < 0 || ring > job) continue;
            var colon = line.IndexOf(": ", ring, StringComparison.Ordinal);
            if (colon > 0 && colon < job) kinds.Add(line[(colon + 2)..job]);
        }
        return kinds.Count == 0 ? "?" : "ring over " + string.Join(" / ", kinds);
    }

    /// <summary>`dtrain cluster`'s processes on loopback (no TLS), Worker:Transport from the environment.</summary>
    sealed class Loopback : IBenchCluster
    {
        readonly LocalCluster cluster;
        readonly Grpc.Net.Client.GrpcChannel channel;

        public Loopback(string logs, string transport)
        {
            cluster = LocalCluster.Start(2, 0, 1, logs, TimeSpan.FromMinutes(3), new Dictionary<string, string> { ["DTRAIN_Worker__Transport"] = transport });
            channel = Remote.Channel(cluster.Address);
            Client = new Jobs.JobsClient(channel);
        }

        public Jobs.JobsClient Client { get; }

        public string WorkerLogs() => string.Concat(Directory.GetFiles(cluster.LogDir, "worker-*.log").Select(File.ReadAllText));

        public void Dispose()
        {
            channel.Dispose();
            cluster.Dispose();
        }
    }

    /// <summary>
    /// deploy/docker-compose.yml as a user runs it (mutual TLS, tokens), under a project name of its own with the
    /// coordinator on free loopback ports, 2 workers; with Worker:Transport=tcp through a second compose file. `down -v` at the end.
    /// </summary>
    sealed class Compose : IBenchCluster
    {
        readonly string root;
        readonly string[] files;
        readonly Dictionary<string, string> environment;
        readonly Grpc.Net.Client.GrpcChannel? channel;

        public Compose(string root, string image, string scratch, string transport)
        {
            this.root = root;
            Directory.CreateDirectory(scratch);
            var name = $"dtrain-bench-{Environment.ProcessId}-{transport}";
            files = ["-f", Path.Combine(root, "deploy", "docker-compose.yml")];
            if (transport != "auto")
            {
                var extra = Path.Combine(scratch, "transport.yml");
                File.WriteAllText(extra, $"services:\n  worker:\n    environment:\n      DTRAIN_Worker__Transport: \"{transport}\"\n");
                files = [.. files, "-f", extra];
            }
            files = [.. files, "-p", name];
            var port = FreePort();
            environment = new()
            {
                ["DTRAIN_IMAGE"] = image,
                ["DTRAIN_BIND"] = "127.0.0.1",
                ["DTRAIN_PORT"] = port.ToString(CultureInfo.InvariantCulture),
                ["DTRAIN_HTTP_PORT"] = FreePort().ToString(CultureInfo.InvariantCulture),
                ["DTRAIN_WORKER_CPUS"] = "1",
            };
            try
            {
                Check(TimeSpan.FromMinutes(6), "up", "-d", "--wait", "--wait-timeout", "300", "--scale", "worker=2");
                var tls = Path.Combine(scratch, "client");
                Check(TimeSpan.FromMinutes(1), "cp", "coordinator:/etc/dtrain/tls/client", tls);
                var token = Check(TimeSpan.FromMinutes(1), "exec", "-T", "coordinator", "dtrain", "tokens", "create", "--role", "admin", "--name", "bench").Trim();
                if (!token.StartsWith("dtr_", StringComparison.Ordinal)) throw new BenchFailureException($"`dtrain tokens create` in the coordinator printed no token: {Last(token)}");
                channel = CliTls.Channel($"https://127.0.0.1:{port}", settings: new TlsSettings { Dir = tls });
                Client = new Jobs.JobsClient(channel.Intercept(m =>
                {
                    m.Add("authorization", "Bearer " + token);
                    return m;
                }));
                WaitForIdleWorkers(2, TimeSpan.FromMinutes(2));
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public Jobs.JobsClient Client { get; } = null!;

        void WaitForIdleWorkers(int count, TimeSpan timeout)
        {
            var clock = Stopwatch.StartNew();
            var last = "no answer";
            while (clock.Elapsed < timeout)
            {
                try
                {
                    var workers = Client.ListWorkers(new ListWorkersRequest(), deadline: DateTime.UtcNow.AddSeconds(10)).Workers;
                    if (workers.Count == count && workers.All(w => w.State == WorkerState.Idle)) return;
                    last = $"{workers.Count} worker(s): {string.Join(", ", workers.Select(w => w.State))}";
                }
                catch (Grpc.Core.RpcException e)
                {
                    last = $"{e.StatusCode}: {e.Status.Detail}";
                }
                Thread.Sleep(500);
            }
            throw new BenchFailureException($"the compose cluster has not {count} idle workers after {timeout.TotalSeconds:F0} s (last: {last})");
        }

        public string WorkerLogs() => ComposeRun(TimeSpan.FromMinutes(1), "logs", "--no-color", "worker").Stdout;

        string Check(TimeSpan timeout, params string[] args)
        {
            var r = ComposeRun(timeout, args);
            if (r.ExitCode != 0) throw new BenchFailureException($"docker compose {string.Join(' ', args)} failed ({r.ExitCode}): {Last(r.Stderr)}");
            return r.Stdout;
        }

        (int ExitCode, string Stdout, string Stderr) ComposeRun(TimeSpan timeout, params string[] args) => Docker(root, environment, timeout, ["compose", .. files, .. args]);

        public void Dispose()
        {
            channel?.Dispose();
            var down = ComposeRun(TimeSpan.FromMinutes(3), "down", "-v", "--remove-orphans", "-t", "30");
            if (down.ExitCode != 0) Console.Error.WriteLine($"docker compose down -v failed ({down.ExitCode}): {Last(down.Stderr)}");
        }
    }

    static (int ExitCode, string Stdout, string Stderr) Docker(string root, IDictionary<string, string>? environment, TimeSpan timeout, params string[] args) =>
        Run(root, "docker", args, environment, timeout);

    /// <summary>Runs a command to its end (killed after <paramref name="timeout"/>); its exit code (-1 when it could not start or was killed) and output.</summary>
    static (int ExitCode, string Stdout, string Stderr) Run(string root, string exe, string[] args, IDictionary<string, string>? environment, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = root };
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new BenchFailureException($"cannot start {exe}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, "", $"cannot start {exe}: {e.Message}");
        }
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(timeout))
            {
                p.Kill(entireProcessTree: true);
                p.WaitForExit();
                return (-1, stdout.GetAwaiter().GetResult(), $"{exe} {string.Join(' ', args)}: no end after {timeout.TotalMinutes:F0} min (killed)");
            }
            return (p.ExitCode, stdout.GetAwaiter().GetResult(), stderr.GetAwaiter().GetResult());
        }
    }

    static string Last(string text) => text.Split('\n').LastOrDefault(l => l.Trim().Length > 0)?.Trim() ?? "";

    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    static string LoadAverage()
    {
        try
        {
            return File.ReadAllText("/proc/loadavg").Split(' ')[0];
        }
        catch (IOException)
        {
            return "?";
        }
    }
}
