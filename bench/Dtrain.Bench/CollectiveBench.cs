using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;
using Dtrain.Collective;
using Dtrain.Rpc;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Bench;

/// <summary>
/// <c>dtrain-bench allreduce [--transports shm,shm-copy,shm-ring,tcp,tcp+tls,tcp+tls256,grpc] [--workers 2,4] [--sizes 4,16,64] [--rounds 5] [--report FILE]</c>:
/// the ring all-reduce over each data-plane transport, every worker a separate process (children of this exe,
/// <c>allreduce --peer ...</c>) on loopback, each told it has one CPU (DOTNET_PROCESSOR_COUNT=1), joined exactly as
/// workers join (gRPC Hello, then shared memory / TCP / the gRPC streams). Bus bandwidth as in nccl-tests:
/// algbw = bytes / time, busbw = algbw * 2(W-1)/W; per round the slowest rank's mean over the round's iterations;
/// the table shows the median of the rounds and their min–max. <c>tcp+tls256</c> is <c>tcp+tls</c> with the records sealed
/// with AEGIS-256 instead of AEGIS-128L (not in the default list), to compare the two in one run. Beside each row, gloo's bus bandwidth for the same
/// world and size from bench/anchors/pytorch_ddp_bench.py (median of 3 runs) when PyTorch is installed.
/// </summary>
public static class CollectiveBench
{
    private const int Warmup = 2;

    public static int Run(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (args.Length > 1 && args[1] == "--peer") return PeerAsync(args[2..]).GetAwaiter().GetResult();
        const string Usage = "dtrain-bench allreduce [--transports shm,shm-copy,shm-ring,tcp,tcp+tls,tcp+tls256,grpc] [--workers 2,4] [--sizes 4,16,64] [--rounds 5] [--report FILE]";
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args[1..], Usage, "--transports", "--workers", "--sizes", "--rounds", "--report");
        string Option(string name, string fallback) => BenchArgs.Option(args, name) ?? fallback;
        var transports = Option("--transports", "shm,shm-copy,shm-ring,tcp,tcp+tls,grpc").Split(',', StringSplitOptions.RemoveEmptyEntries);
        // Bounded here: a world of one has no ring, and --sizes is in millions of floats (256M floats = 1 GB per worker).
        var workers = BenchArgs.Numbers("--workers", Option("--workers", "2,4"), 2, 16, Usage);
        var sizes = BenchArgs.Numbers("--sizes", Option("--sizes", "4,16,64"), 1, 256, Usage).Select(s => s << 20).ToArray();
        var rounds = BenchArgs.Number("--rounds", Option("--rounds", "5"), 1, 100, Usage);
        var report = Option("--report", "");
        foreach (var t in transports)
            if (!DataTransports.TryParse(BaseTransport(t), out var parsed) || parsed == DataTransport.Auto || ((t.EndsWith("-ring", StringComparison.Ordinal) || t.EndsWith("-copy", StringComparison.Ordinal)) && parsed != DataTransport.Shm)
                || (t.EndsWith("+tls256", StringComparison.Ordinal) && parsed != DataTransport.Tcp))
                throw new ArgumentException($"--transports: \"{t}\" is not shm, shm-copy, shm-ring, tcp, tcp+tls, tcp+tls256, grpc or grpc+tls");
        return MainAsync(transports, workers, sizes, rounds, report).GetAwaiter().GetResult();
    }

    /// <summary>
    /// "shm" is what workers use by default on one host: the shared-memory group, summing a registered buffer in place;
    /// "shm-copy" is the group summing memory of the caller's own (copied through its slots); "shm-ring" the ring over
    /// shared-memory links.
    /// </summary>
    private static string BaseTransport(string name) => name.Replace("+tls256", "", StringComparison.Ordinal).Replace("+tls", "", StringComparison.Ordinal).Replace("-ring", "", StringComparison.Ordinal).Replace("-copy", "", StringComparison.Ordinal);

    private static bool IsTls(string transport) => transport.EndsWith("+tls", StringComparison.Ordinal) || transport.EndsWith("+tls256", StringComparison.Ordinal);

    private static async Task<int> MainAsync(string[] transports, int[] workers, int[] sizes, int rounds, string report)
    {
        var conditions = $"loopback, one process per worker (DOTNET_PROCESSOR_COUNT=1), {Environment.ProcessorCount} cores, load average {LoadAverage()}, " +
                         $"{Warmup} warm-up ops, then {rounds} rounds (each the mean of {IterationsText(sizes)}); median [min–max] of the rounds";
        var gloo = GlooAvailable(out var glooWhy);
        var lines = new List<string>
        {
            $"all-reduce: {conditions}",
            "shm = the shared-memory group workers of one host use by default (Worker:SharedMemoryGroup), on the registered gradient buffer as replicas sum it (zero-copy); shm-copy = the group on a buffer of the caller's own (copied through the group's slots); shm-ring = the ring over shared-memory links; tcp, tcp+tls, grpc = the ring over those links (tcp+tls: AEGIS-128L records; tcp+tls256: the same with AEGIS-256)",
            gloo ? "gloo: bench/anchors/pytorch_ddp_bench.py allreduce (PyTorch gloo over TCP on loopback, 1 thread per process), median of 3 runs, measured in this run"
                 : $"gloo: not measured ({glooWhy}); install it with `apt-get install -y python3-torch libopenblas0-pthread`",
            "",
            "| transport | workers | floats | MB | ms/op | busbw GB/s (median [min–max]) | gloo busbw GB/s | dtrain / gloo |",
            "|---|---|---|---|---|---|---|---|",
        };
        foreach (var line in lines) Console.WriteLine(line);
        var glooCache = new Dictionary<(int, int), double?>();
        foreach (var world in workers)
            foreach (var floats in sizes)
            {
                double? glooBus = null;
                if (gloo)
                {
                    glooBus = RunGloo(world, floats);
                    glooCache[(world, floats)] = glooBus;
                }
                foreach (var transport in transports)
                {
                    var perRound = await RunWorkersAsync(transport, world, floats, rounds);
                    var bytes = (double)floats * sizeof(float);
                    double Bus(double seconds) => bytes / seconds / 1e9 * 2 * (world - 1) / world;
                    var sorted = perRound.Order().ToArray();
                    var median = BenchArgs.Median(sorted);
                    var line = string.Create(CultureInfo.InvariantCulture,
                        $"| {transport} | {world} | {floats >> 20}M | {bytes / 1e6:F0} | {median * 1e3:F1} | {Bus(median):F3} [{Bus(sorted[^1]):F3}–{Bus(sorted[0]):F3}] | {(glooBus is { } g ? g.ToString("F3", CultureInfo.InvariantCulture) : "–")} | {(glooBus is { } g2 ? (Bus(median) / g2).ToString("F2", CultureInfo.InvariantCulture) + "×" : "–")} |");
                    Console.WriteLine(line);
                    lines.Add(line);
                }
            }
        if (!string.IsNullOrEmpty(report))
        {
            await File.WriteAllTextAsync(report, string.Join('\n', lines) + "\n");
            Console.WriteLine($"report: {report}");
        }
        return 0;
    }

    private static string IterationsText(int[] sizes) => string.Join(", ", sizes.Select(s => string.Create(CultureInfo.InvariantCulture, $"{Iterations(s)} ops at {s >> 20}M")));

    /// <summary>Fewer ops per round for larger buffers, so every round lasts about as long.</summary>
    private static int Iterations(int floats) => Math.Max(3, (int)(10L * (4 << 20) / floats));

    private static string LoadAverage()
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

    private static string? AnchorScript()
    {
        var root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "Distributed.sln")))
        {
            var parent = Path.GetDirectoryName(root);
            if (parent is null) return null;
            root = parent;
        }
        var script = Path.Combine(root, "bench", "anchors", "pytorch_ddp_bench.py");
        return File.Exists(script) ? script : null;
    }

    private static bool GlooAvailable(out string why)
    {
        if (AnchorScript() is null)
        {
            why = "bench/anchors/pytorch_ddp_bench.py not found";
            return false;
        }
        if (!File.Exists("/usr/bin/python3"))
        {
            why = "/usr/bin/python3 is not installed";
            return false;
        }
        var (code, output) = Python("-c", "import torch, torch.distributed; print(torch.__version__)");
        why = code == 0 ? "" : "PyTorch (python3-torch) is not installed";
        return code == 0 && output.Length > 0;
    }

    private static (int Code, string Output) Python(params string[] arguments)
    {
        var start = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        // Debian's OpenBLAS must pick its own core type: the variables some images set break it.
        start.Environment.Remove("OPENBLAS_CORETYPE");
        start.Environment.Remove("OPENBLAS_L2_SIZE");
        start.Environment["OPENBLAS_NUM_THREADS"] = "1";
        using var process = Process.Start(start) ?? throw new InvalidOperationException("cannot start /usr/bin/python3");
        var stdout = process.StandardOutput.ReadToEndAsync();
        _ = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            return (-1, "");
        }
        return (process.ExitCode, stdout.Result);
    }

    /// <summary>gloo's bus bandwidth for W ranks x N floats: the median of 3 runs of the anchor script.</summary>
    private static double? RunGloo(int world, int floats)
    {
        var figures = new List<double>();
        for (var run = 0; run < 3; run++)
        {
            var (code, output) = Python(AnchorScript()!, "allreduce", world.ToString(CultureInfo.InvariantCulture), floats.ToString(CultureInfo.InvariantCulture));
            var at = output.IndexOf("busbw_GBps=", StringComparison.Ordinal);
            if (code != 0 || at < 0) continue;
            var value = output[(at + "busbw_GBps=".Length)..].Split(' ', '\n')[0];
            figures.Add(double.Parse(value, CultureInfo.InvariantCulture));
        }
        return figures.Count == 0 ? null : BenchArgs.Median(figures);
    }

    /// <summary>Starts W peers, wires their addresses, returns per round the slowest rank's mean seconds per op.</summary>
    private static async Task<double[]> RunWorkersAsync(string transport, int world, int floats, int rounds)
    {
        var (exe, prefix) = SelfCommand();
        var peers = new List<Process>();
        var pki = IsTls(transport) ? Pki(world) : null;
        // Stopped (Ctrl-C, `timeout`), the bench takes its peers with it: none is left holding a core.
        void KillPeers()
        {
            lock (peers)
                foreach (var peer in peers)
                    try { if (!peer.HasExited) peer.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        }
        using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ => KillPeers());
        using var onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, _ => KillPeers());
        try
        {
            for (var rank = 0; rank < world; rank++)
            {
                var start = new ProcessStartInfo(exe)
                {
                    RedirectStandardInput = true,
                    RedirectStandardOutput = true,
                    UseShellExecute = false,
                };
                foreach (var a in prefix.Concat(["allreduce", "--peer", transport, $"{rank}", $"{world}", $"{floats}", $"{rounds}", $"{Iterations(floats)}", pki ?? "-"])) start.ArgumentList.Add(a);
                // One CPU per worker unless the caller says otherwise (children inherit the environment).
                if (Environment.GetEnvironmentVariable("DOTNET_PROCESSOR_COUNT") is null) start.Environment["DOTNET_PROCESSOR_COUNT"] = "1";
                // As a worker runs (dtrain.dll: no tiered compilation, pool threads that do not spin): without it the
                // reduction loop ran as tier-0 code (TensorPrimitives' Vector512 add QuickJitted, per perf) for most of
                // a short run, which no worker ever does.
                start.Environment["DOTNET_TieredCompilation"] = "0";
                start.Environment["DOTNET_ThreadPool_UnfairSemaphoreSpinLimit"] = "0";
                var started = Process.Start(start) ?? throw new BenchFailureException("cannot start a peer process");
                lock (peers) peers.Add(started);
            }
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(15));
            var addresses = new List<string>();
            string Row() => $"{transport}, {world} workers x {floats >> 20}M floats";
            foreach (var peer in peers) addresses.Add(await ReadTaggedLineAsync(peer, peers.IndexOf(peer), Row(), "ADDRESS ", timeout.Token));
            foreach (var peer in peers)
            {
                await peer.StandardInput.WriteLineAsync(string.Join(',', addresses));
                await peer.StandardInput.FlushAsync(timeout.Token);
            }
            var results = new List<double[]>();
            foreach (var peer in peers)
                results.Add([.. (await ReadTaggedLineAsync(peer, peers.IndexOf(peer), Row(), "RESULT ", timeout.Token)).Split(',').Select(s => double.Parse(s, CultureInfo.InvariantCulture))]);
            foreach (var peer in peers) await peer.WaitForExitAsync(timeout.Token);
            return [.. Enumerable.Range(0, rounds).Select(r => results.Max(perRank => perRank[r]))];
        }
        finally
        {
            KillPeers();
            foreach (var peer in peers) peer.Dispose();
            if (pki is not null) Directory.Delete(pki, recursive: true);
        }
    }

    /// <summary>A throw-away cluster CA and one worker certificate per rank (w0, w1, ...), as `dtrain certs` makes them.</summary>
    private static string Pki(int world)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"dtrain-bench-pki-{Guid.NewGuid():N}");
        ClusterCertificates.CreatePrivateDirectory(dir);
        using var authority = ClusterCertificates.CreateAuthority("bench CA", TimeSpan.FromDays(1));
        ClusterCertificates.WriteFile(Path.Combine(dir, "ca.crt"), authority.ExportCertificatePem(), secret: false);
        for (var rank = 0; rank < world; rank++)
        {
            using var certificate = ClusterCertificates.Issue(authority, $"w{rank}", ClusterRoles.Worker, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
            ClusterCertificates.WriteFile(Path.Combine(dir, $"w{rank}.crt"), certificate.ExportCertificatePem(), secret: false);
            ClusterCertificates.WriteFile(Path.Combine(dir, $"w{rank}.key"), ClusterCertificates.KeyPem(certificate), secret: true);
        }
        return dir;
    }

    private static async Task<string> ReadTaggedLineAsync(Process peer, int rank, string row, string tag, CancellationToken cancellationToken)
    {
        while (true)
        {
            var line = await peer.StandardOutput.ReadLineAsync(cancellationToken);
            if (line is null)
            {
                await peer.WaitForExitAsync(cancellationToken);
                throw new BenchFailureException($"{row}: peer rank {rank} (pid {peer.Id}) exited with code {peer.ExitCode} before printing {tag.Trim()} (its error is above)");
            }
            if (line.StartsWith(tag, StringComparison.Ordinal)) return line[tag.Length..];
        }
    }

    /// <summary>How to start this bench again in a child process: the apphost, or `dotnet dtrain-bench.dll`.</summary>
    internal static (string Exe, string[] Prefix) SelfCommand()
    {
        var process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        // Run through "dotnet dtrain-bench.dll": start the dll the same way.
        return Path.GetFileNameWithoutExtension(process) == "dotnet" ? (process, [typeof(CollectiveBench).Assembly.Location]) : (process, []);
    }

    /// <summary>
    /// Runs `dtrain-bench COMMAND ARGS` again in a child process with dtrain's process settings — tcmalloc preloaded where
    /// installed, no tiered compilation (as src/Cli/Dtrain.Cli.csproj) — marked by <paramref name="childVariable"/> so
    /// the child measures instead of starting another; returns its exit code.
    /// </summary>
    internal static int InDtrainSettings(string command, string childVariable, string[] args)
    {
        var (exe, prefix) = SelfCommand();
        var psi = new System.Diagnostics.ProcessStartInfo(exe, prefix) { UseShellExecute = false };
        Dtrain.Runtime.NativeAllocator.Preload(psi);
        psi.Environment["DOTNET_TieredCompilation"] = "0";
        psi.Environment[childVariable] = "1";
        psi.ArgumentList.Add(command);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var child = System.Diagnostics.Process.Start(psi) ?? throw new BenchFailureException("could not start the measuring process");
        child.WaitForExit();
        return child.ExitCode;
    }

    /// <summary>A worker: host the collective endpoint, print its address, read everyone's, join the ring, run, print each round's mean.</summary>
    private static async Task<int> PeerAsync(string[] args)
    {
        var tls = IsTls(args[0]);
        if (args[0].EndsWith("+tls256", StringComparison.Ordinal)) SealedRecords.KeyBytes = 32;
        var transport = DataTransports.TryParse(BaseTransport(args[0]), out var t) ? t : throw new ArgumentException(args[0]);
        var useGroup = args[0] is "shm" or "shm-copy";
        var registered = args[0] == "shm";
        var rank = int.Parse(args[1], CultureInfo.InvariantCulture);
        var world = int.Parse(args[2], CultureInfo.InvariantCulture);
        var floats = int.Parse(args[3], CultureInfo.InvariantCulture);
        var rounds = int.Parse(args[4], CultureInfo.InvariantCulture);
        var iterations = int.Parse(args[5], CultureInfo.InvariantCulture);

        WebApplication app;
        RingSecurity? security = null;
        if (tls)
        {
            // As a worker with cluster TLS: mutual TLS on the gRPC port, the ring pinned to each rank's certificate.
            var pki = args[6];
            var own = new TlsSettings { Ca = Path.Combine(pki, "ca.crt"), Cert = Path.Combine(pki, $"w{rank}.crt"), Key = Path.Combine(pki, $"w{rank}.key") }.Load("bench", CertificateNeed.Required);
            var ranks = Enumerable.Range(0, world).Select(r =>
            {
                using var c = System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(File.ReadAllText(Path.Combine(pki, $"w{r}.crt")));
                return ExpectedPeer.Worker($"w{r}", ClusterCertificates.Sha256(c));
            }).ToList();
            security = new RingSecurity(own, ranks);
            var builder = GrpcServerHost.CreateBuilder("127.0.0.1", 0, 64 << 20, l => l.SetMinimumLevel(LogLevel.Warning), security: new ServerSecurity(own, AccessPolicy.Worker()));
            builder.Services.AddDtrainCollective();
            app = builder.Build();
        }
        else
        {
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.Logging.AddSimpleConsole().SetMinimumLevel(LogLevel.Warning);   // a link that breaks says why
            builder.AddDtrainCollective(new IPEndPoint(IPAddress.Loopback, 0));
            app = builder.Build();
        }
        await using var _ = app;
        app.MapDtrainCollective();
        await app.StartAsync();
        Console.WriteLine($"ADDRESS {GrpcServerHost.LocalAddress(app)}");
        var addresses = (Console.ReadLine() ?? throw new InvalidOperationException("no peer list on stdin")).Split(',');
        var ring = await app.Services.GetRequiredService<DataPlane>().ConnectRingAsync("bench", 1, rank, world, addresses, transport, security: security);

        var allReduce = new RingAllReduce(ring, operationTimeout: TimeSpan.FromMinutes(10));
        // As a worker does (DataPlaneRingConnector): every rank takes part in forming the group.
        var (group, whyNot) = await SharedMemoryAllReduce.FormAsync(allReduce, useGroup, ring is PeerRingTransport mesh && mesh.Peers.LinkTo((rank + 1) % world) == "shared memory",
            -1000, TimeSpan.FromMinutes(10));
        if (useGroup && group is null) throw new InvalidOperationException($"no shared-memory group: {whyNot}");
        // As a replica's gradient buffer is: registered with the group when there is one (DataParallelReplica).
        using var region = registered ? await group!.RegisterBufferAsync(floats, -998) ?? throw new InvalidOperationException("the group could not register a buffer") : null;
        var buffer = region?.Memory ?? new float[floats];
        var random = new Random(rank);
        var span = buffer.Span;
        for (var i = 0; i < span.Length; i++) span[i] = random.NextSingle();
        Task Sum(Memory<float> values, long operation) => group is not null ? group.SumAsync(values, operation) : allReduce.SumAsync(values, operation);
        long op = 0;
        for (var i = 0; i < Warmup; i++) await Sum(buffer, op++);
        var perRound = new List<double>();
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        for (var round = 0; round < rounds; round++)
        {
            await Sum(new float[world], op++);   // barrier
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < iterations; i++) await Sum(buffer, op++);
            perRound.Add(clock.Elapsed.TotalSeconds / iterations);
        }
        var cpuTimed = Process.GetCurrentProcess().TotalProcessorTime - cpuBefore;
        if (group is not null) await group.DisposeAsync();
        if (Environment.GetEnvironmentVariable("DTRAIN_BENCH_GC") is not null)
            Console.Error.WriteLine($"[{args[0]} w{world} r{rank} {floats >> 20}M] gc {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)} allocated {GC.GetTotalAllocatedBytes() >> 20} MiB cpu {Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F2}s, {cpuTimed.TotalSeconds:F2}s of it in the {rounds * iterations} timed sums (and {rounds} barriers)");
        var result = new StringBuilder();
        foreach (var seconds in perRound) result.Append(result.Length > 0 ? "," : "").Append(seconds.ToString("R", CultureInfo.InvariantCulture));
        Console.WriteLine($"RESULT {result}");
        // Leave the ring first: closing our links lets the right neighbour's reader finish, so no host waits out its
        // graceful-shutdown timeout for an inbound stream that is still open.
        await ring.DisposeAsync();
        await app.StopAsync();
        return 0;
    }
}

/// <summary>A bench row could not be measured (a peer failed); the bench says which and exits 1, without a stack trace.</summary>
internal sealed class BenchFailureException(string message) : Exception(message);
