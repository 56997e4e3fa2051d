using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Dtrain.Protos.Jobs;
using Dtrain.Runtime;
using Grpc.Core;

namespace Dtrain.Cli;

/// <summary>A coordinator and N workers as child processes on loopback, for `dtrain cluster` and multi-process tests.</summary>
public sealed class LocalCluster : IDisposable
{
    private readonly List<Process> processes = [];
    private IDictionary<string, string>? environment;
    private int threads = 1;
    private int workerCount;
    private string[] coordinatorArgs = [];
    private bool portChosen;
    private long coordinatorLogStart;
    private bool started;
    private volatile bool coordinatorListening;

    public const int MinWorkers = 1, MaxWorkers = 64, MinThreads = 1, MaxThreads = 1024;

    public string Address { get; }
    public string LogDir { get; }

    /// <summary>The coordinator's dashboard (http://127.0.0.1:PORT/), from the line `dtrain serve` prints; null until it has printed it.</summary>
    public string? DashboardUrl { get; private set; }

    private const string DashboardLine = "dashboard and /metrics on ";

    /// <summary>What `dtrain serve` prints once it listens (on <see cref="Address"/>): the sign that the coordinator at the address is this cluster's own.</summary>
    private const string ListeningLine = "coordinator listening on ";

    private LocalCluster(string address, string logDir)
    {
        Address = address;
        LogDir = logDir;
    }

    /// <summary>
    /// Refuses (<see cref="ArgumentException"/> naming the option and its range) a worker count, thread count or port
    /// the cluster cannot start with, and a port something already listens on, before any process starts.
    /// </summary>
    public static void CheckOptions(int workers, int port, int? threadsPerWorker)
    {
        if (workers is < MinWorkers or > MaxWorkers) throw new ArgumentException($"--workers {workers} must be a number of workers from {MinWorkers} to {MaxWorkers}");
        if (threadsPerWorker is < MinThreads or > MaxThreads) throw new ArgumentException($"--threads {threadsPerWorker} must be a number of torch threads per worker from {MinThreads} to {MaxThreads}");
        if (port is < 0 or > IPEndPoint.MaxPort) throw new ArgumentException($"--port {port} must be a TCP port from 1 to {IPEndPoint.MaxPort}, or 0 for any free port");
        if (port != 0 && !IsFree(port))
            throw new ArgumentException($"--port {port}: something already listens on 127.0.0.1:{port} (another coordinator or cluster?); stop it, choose another port, or give --port 0 for any free port");
    }

    /// <summary>
    /// Starts the processes and waits until this cluster's own coordinator listens and every worker is registered
    /// with it and idle. <paramref name="port"/> 0 = any free port; a port something already listens on is refused.
    /// </summary>
    /// <paramref name="dataRoots"/>: the coordinator's data roots (`dtrain serve --data-root`), none by default.
    public static LocalCluster Start(int workers, int port, int threadsPerWorker, string logDir, TimeSpan timeout, IDictionary<string, string>? environment = null, IReadOnlyList<string>? dataRoots = null) =>
        Start(workers, port, threadsPerWorker, logDir, timeout, environment, FreePort, dataRoots);

    /// <summary>How many ports <see cref="Start(int, int, int, string, TimeSpan, IDictionary{string, string}?, IReadOnlyList{string}?)"/> tries when it chooses one.</summary>
    internal const int PortAttempts = 3;

    /// <summary>
    /// <see cref="Start(int, int, int, string, TimeSpan, IDictionary{string, string}?, IReadOnlyList{string}?)"/> with the free-port picker given
    /// (tests hand it a port something holds). A chosen port can be taken by another process between the pick and the
    /// coordinator's listen; then the cluster starts again on another chosen port, up to <see cref="PortAttempts"/> times.
    /// </summary>
    internal static LocalCluster Start(int workers, int port, int threadsPerWorker, string logDir, TimeSpan timeout, IDictionary<string, string>? environment, Func<int> pickPort, IReadOnlyList<string>? dataRoots = null)
    {
        CheckOptions(workers, port, threadsPerWorker);
        var chosen = port == 0;
        Directory.CreateDirectory(logDir);
        for (var attempt = 1; ; attempt++)
        {
            var listenPort = chosen ? pickPort() : port;
            var cluster = new LocalCluster($"http://127.0.0.1:{listenPort}", Path.GetFullPath(logDir)) { environment = environment, threads = threadsPerWorker, portChosen = chosen };
            try
            {
                cluster.coordinatorArgs = ["serve", "--port", listenPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--data-dir", Path.Combine(logDir, "coordinator"), "--http-port", "0",
                    .. (dataRoots ?? []).SelectMany(root => new[] { "--data-root", root })];
                cluster.coordinatorLogStart = LogLength(Path.Combine(cluster.LogDir, "coordinator.log"));
                cluster.processes.Add(cluster.Spawn("coordinator", environment, cluster.coordinatorArgs));
                for (var i = 0; i < workers; i++) cluster.AddWorker();
                cluster.WaitForWorkers(workers, timeout);
                cluster.started = true;
                return cluster;
            }
            catch (ChosenPortTakenException) when (attempt < PortAttempts)
            {
                cluster.Dispose();
                // Another process took the port between the pick and the coordinator's listen: pick again.
            }
            catch
            {
                cluster.Dispose();
                throw;
            }
        }
    }

    private static long LogLength(string path)
    {
        try { return new FileInfo(path).Length; }
        catch (FileNotFoundException) { return 0; }
    }

    /// <summary>Starts one more worker process (named worker-N, N counting from 1); returns its 0-based index.</summary>
    public int AddWorker()
    {
        var n = ++workerCount;
        processes.Add(Spawn($"worker-{n}", environment, "worker", "--coordinator", Address, "--threads", threads.ToString(System.Globalization.CultureInfo.InvariantCulture), "--name", $"worker-{n}"));
        return n - 1;
    }

    private Process Spawn(string name, IDictionary<string, string>? environment, params string[] args)
    {
        var (exe, prefix) = Self();
        var psi = new ProcessStartInfo(exe) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in prefix.Concat(args)) psi.ArgumentList.Add(a);
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        NativeAllocator.Preload(psi);
        var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {name}");
        var log = new StreamWriter(Path.Combine(LogDir, name + ".log"), append: true) { AutoFlush = true };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (log) log.WriteLine(e.Data);
            if (name == "coordinator" && e.Data.StartsWith(DashboardLine, StringComparison.Ordinal)) DashboardUrl = e.Data[DashboardLine.Length..].Trim() + "/";
            if (name == "coordinator" && e.Data.StartsWith(ListeningLine + Address, StringComparison.Ordinal)) coordinatorListening = true;
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    /// <summary>How to run this same CLI again: the apphost, or `dotnet dtrain.dll`.</summary>
    private static (string Exe, string[] Prefix) Self()
    {
        var dll = typeof(LocalCluster).Assembly.Location;
        var process = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(process) == "dotnet" ? (process, [dll]) : ("dotnet", [dll]);
    }

    private void WaitForWorkers(int count, TimeSpan timeout)
    {
        using var channel = Remote.Channel(Address);
        var client = new Jobs.JobsClient(channel);
        var clock = Stopwatch.StartNew();
        while (true)
        {
            CheckCoordinatorAlive("during start-up");
            for (var i = 1; i < processes.Count; i++)
                if (processes[i].HasExited)
                    throw new InvalidOperationException($"worker-{i} exited with status {processes[i].ExitCode} during start-up; see {Path.Combine(LogDir, $"worker-{i}.log")}");
            try
            {
                // Only the coordinator this cluster started counts: until it has said it listens on the address,
                // whatever answers there is someone else's.
                var idle = coordinatorListening ? client.ListWorkers(new ListWorkersRequest(), deadline: DateTime.UtcNow.AddSeconds(5)).Workers.Count(w => w.State == WorkerState.Idle) : 0;
                if (idle >= count)
                {
                    CheckCoordinatorAlive("during start-up");
                    return;
                }
            }
            catch (RpcException)
            {
                // The coordinator is still starting.
            }
            if (clock.Elapsed > timeout) throw new TimeoutException($"only some of {count} workers registered within {timeout.TotalSeconds:F0}s; see the logs in {LogDir}");
            Thread.Sleep(200);
        }
    }

    /// <summary>
    /// Stops the coordinator as an operator would (SIGTERM: a graceful shutdown) and waits until it has exited;
    /// returns how long that took.
    /// </summary>
    public TimeSpan StopCoordinator(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        using (var kill = Process.Start("kill", ["-TERM", processes[0].Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])) kill.WaitForExit();
        if (!processes[0].WaitForExit(timeout)) throw new TimeoutException($"the coordinator did not exit within {timeout} of SIGTERM; see {Path.Combine(LogDir, "coordinator.log")}");
        return clock.Elapsed;
    }

    /// <summary>Kills the coordinator abruptly (SIGKILL), as a crash would; its data directory stays.</summary>
    public void KillCoordinator()
    {
        processes[0].Kill(entireProcessTree: true);
        processes[0].WaitForExit();
    }

    /// <summary>
    /// Starts the coordinator again on the same port and data directory (after <see cref="KillCoordinator"/> or <see cref="StopCoordinator"/>) and
    /// waits until every worker has registered with it again (busy or idle).
    /// </summary>
    public void RestartCoordinator(TimeSpan timeout)
    {
        if (!processes[0].HasExited) throw new InvalidOperationException("the coordinator is still running: kill it first");
        processes[0].Dispose();
        coordinatorListening = false;
        coordinatorLogStart = LogLength(Path.Combine(LogDir, "coordinator.log"));
        processes[0] = Spawn("coordinator", environment, coordinatorArgs);
        using var channel = Remote.Channel(Address);
        var client = new Jobs.JobsClient(channel);
        var clock = Stopwatch.StartNew();
        while (true)
        {
            CheckCoordinatorAlive("after its restart");
            try
            {
                if (coordinatorListening && client.ListWorkers(new ListWorkersRequest(), deadline: DateTime.UtcNow.AddSeconds(5)).Workers.Count >= processes.Count(p => !p.HasExited) - 1) return;
            }
            catch (RpcException)
            {
                // Still starting.
            }
            if (clock.Elapsed > timeout) throw new TimeoutException($"the workers did not register with the restarted coordinator within {timeout.TotalSeconds:F0}s; see the logs in {LogDir}");
            Thread.Sleep(200);
        }
    }

    /// <summary>Kills worker <paramref name="index"/> (0-based) abruptly, as a crash would.</summary>
    public void KillWorker(int index) => processes[index + 1].Kill(entireProcessTree: true);

    /// <summary>Process id of the coordinator (e.g. to read its peak memory).</summary>
    public int CoordinatorProcessId => processes[0].Id;

    /// <summary>Process id of worker <paramref name="index"/> (0-based), e.g. to stop it with SIGSTOP as a hang would.</summary>
    public int WorkerProcessId(int index) => processes[index + 1].Id;

    /// <summary>Exit status of worker <paramref name="index"/> (0-based) once it exits within <paramref name="timeout"/>; null if it is still running.</summary>
    public int? WaitForWorkerExit(int index, TimeSpan timeout) =>
        processes[index + 1].WaitForExit(timeout) ? processes[index + 1].ExitCode : null;

    /// <summary>
    /// Throws when this cluster's coordinator process has exited: when it could not listen because something else
    /// already does (an <see cref="ArgumentException"/> naming the port), else naming its exit status and log.
    /// </summary>
    private void CheckCoordinatorAlive(string when)
    {
        if (!processes[0].HasExited) return;
        var log = Path.Combine(LogDir, "coordinator.log");
        processes[0].WaitForExit(); // flushes the redirected output into the log
        string text;
        try
        {
            // Only what this coordinator wrote: the log is appended to by every start (and restart) in the directory.
            using var file = new FileStream(log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            file.Seek(Math.Min(coordinatorLogStart, file.Length), SeekOrigin.Begin);
            text = new StreamReader(file).ReadToEnd();
        }
        catch (IOException) { text = ""; }
        var port = new Uri(Address).Port;
        if (text.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
        {
            if (portChosen && !started)
                throw new ChosenPortTakenException($"the free port {port} chosen for the coordinator was taken by another process before the coordinator could listen on it, {PortAttempts} times in a row; run again (see {log})");
            if (portChosen)
                throw new ArgumentException($"the free port {port} chosen for the coordinator was taken by another process before the coordinator could listen on it again; run again (see {log})");
            throw new ArgumentException($"--port {port}: something already listens on 127.0.0.1:{port}, so the coordinator could not; stop it, choose another port, or give --port 0 for any free port (see {log})");
        }
        throw new InvalidOperationException($"the coordinator exited with status {processes[0].ExitCode} {when}; see {log}");
    }

    /// <summary>Whether nothing listens on 127.0.0.1:<paramref name="port"/> (a listener can be opened there now).</summary>
    private static bool IsFree(int port)
    {
        try
        {
            using var l = new TcpListener(IPAddress.Loopback, port);
            l.Start();
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse)
        {
            return false;
        }
        catch (SocketException e)
        {
            throw new ArgumentException($"--port {port}: cannot listen on 127.0.0.1:{port}: {e.Message}");
        }
    }

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        // Workers first so they leave cleanly, then the coordinator.
        foreach (var p in Enumerable.Reverse(processes))
        {
            try
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.WaitForExit(5000);
            }
            catch (InvalidOperationException)
            {
                // Already gone.
            }
            p.Dispose();
        }
        processes.Clear();
    }
}

/// <summary>The port <see cref="LocalCluster"/> chose for its coordinator was taken before the coordinator listened on it.</summary>
internal sealed class ChosenPortTakenException(string message) : ArgumentException(message);
