using System.CommandLine;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Cli;

/// <summary>`dtrain serve` (the coordinator) and `dtrain worker` (a worker) in the foreground.</summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var port = new Option<int?>("--port", "-p") { Description = "Port to listen on (default 5000; 0 = any free port)." };
        var listen = new Option<string?>("--listen") { Description = "Interface to listen on (default 127.0.0.1; 0.0.0.0 for all)." };
        var httpPort = new Option<int?>("--http-port") { Description = $"Port of the dashboard and Prometheus /metrics (HTTP/1.1, same interface; HTTPS with TLS; default {CoordinatorOptions.DefaultHttpPort}; 0 = any free port; -1 = off)." };
        var dataDir = new Option<string?>("--data-dir") { Description = "Directory for job data and checkpoints (default .dtrain/coordinator)." };
        var dataRoots = new Option<string[]>("--data-root") { Description = "A directory whose regular files jobs may name as data by absolute path instead of uploading them, and whose prepared datasets (data.dataset) they may train from (repeatable; default none: the coordinator reads only uploaded files, and datasets only from s3://)." };
        var sharedData = new Option<string?>("--shared-data-dir") { Description = "A directory every worker sees at the same path (shared storage): the data files uploaded with a job are prepared into a dataset there, streaming, and the workers read it themselves; uploads are then limited by the upload quota rather than 1 GiB (Coordinator:SharedDataDir; default none: a job reads its files into memory)." };
        var caKey = new Option<string?>("--ca-key") { Description = "TLS: the CA's private key, with which the coordinator signs each worker's certificate (default: ca.key in --tls-dir)." };
        var insecure = Credentials.InsecureOption; // the global option: one --insecure in --help
        var joinTokens = new Option<string?>("--join-token-file") { Description = "Join tokens, one per line: a worker may join with one instead of a worker certificate (Coordinator:JoinTokens)." };
        var cmd = new Command("serve", "Run the coordinator: workers register with it, the CLI submits jobs to it. TLS with --tls-dir DIR/coordinator " +
                                       "(from `dtrain certs init`); required when listening beyond loopback. Settings also come from appsettings.json and DTRAIN_Coordinator__* variables.");
        foreach (var o in new Option[] { port, listen, httpPort, dataDir, dataRoots, sharedData, caKey, joinTokens }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var options = CoordinatorHost.ReadOptions(r.UnmatchedTokens.ToArray());
            options = options with
            {
                Port = r.GetValue(port) ?? options.Port,
                Listen = r.GetValue(listen) ?? options.Listen,
                HttpPort = r.GetValue(httpPort) ?? options.HttpPort ?? DefaultHttpPort(r.GetValue(listen) ?? options.Listen),
                DataDir = r.GetValue(dataDir) is { } dir && CliPaths.DirectoryToUse(dir, "--data-dir", "the directory for job data and checkpoints") is not null ? dir : options.DataDir,
                DataRoots = r.GetValue(dataRoots) is { Length: > 0 } roots ? [.. roots.Select(Path.GetFullPath)] : options.DataRoots,
                SharedDataDir = r.GetValue(sharedData) is { Length: > 0 } shared ? Path.GetFullPath(shared) : options.SharedDataDir,
                Tls = (options.Tls ?? new TlsSettings()).Over(CliTls.CommandLine(r) with { CaKey = r.GetValue(caKey), Insecure = r.GetValue(insecure) }),
                JoinTokenFile = r.GetValue(joinTokens) ?? options.JoinTokenFile,
            };
            // Job data, uploads, checkpoints and the job store are the coordinator's alone (0600 files, 0700 directories).
            PrivateFiles.RestrictUmask();
            var app = CoordinatorHost.Build(options);
            app.Lifetime.ApplicationStarted.Register(() =>
            {
                var bound = GrpcServerHost.BoundAddress(app).ToString().TrimEnd('/');
                var local = CoordinatorHost.Address(app);
                Console.WriteLine(bound == local ? $"coordinator listening on {local}" : $"coordinator listening on {bound} (from this machine: {local})");
                if (CoordinatorHost.HttpAddress(app) is { } web) Console.WriteLine($"dashboard and /metrics on {web}");
                Console.WriteLine(SecurityLine(app.Services.GetRequiredService<CoordinatorSecurity>()));
            });
            app.Run();
            return CliErrors.Ok;
        }));
        cmd.TreatUnmatchedTokensAsErrors = false;
        return cmd;
    }

    public static Command CreateWorker()
    {
        var port = new Option<int?>("--port", "-p") { Description = "Port of this worker's gRPC server (default 0 = any free port)." };
        var listen = new Option<string?>("--listen") { Description = "Interface to listen on (default 127.0.0.1)." };
        var httpPort = new Option<int?>("--http-port") { Description = "Port of this worker's Prometheus /metrics (HTTP/1.1, same interface; default none; 0 = any free port)." };
        var advertise = new Option<string?>("--advertise") { Description = "Host name or IP peers use to reach this worker (default: the listen address)." };
        var threads = new Option<string?>("--threads") { Description = "Intra-op torch threads: a number, or auto = the CPUs this process may use (a container's CPU quota). Default 1: several workers may share a machine." };
        var device = new Option<string?>("--device") { Description = "cpu, cuda or cuda:N (falls back to CPU when CUDA is absent)." };
        var name = new Option<string?>("--name") { Description = "A name shown next to this worker's id by `dtrain workers` and accepted in its place (1-63 letters, digits, '.', '_', '-'; not w followed by digits: ids w1, w2, ... are the coordinator's)." };
        var transport = new Option<string?>("--transport") { Description = "How gradient bytes (and a pipeline stage's activations and activation gradients) travel between workers: auto (default; shared memory to a worker on this host, TCP to one elsewhere), shm, tcp or grpc." };
        var budget = new Option<double?>("--memory-budget") { Description = "Memory this worker may use for a job, in MB: a larger model is refused, to be split into pipeline stages. Default: the memory available when the job comes (MemAvailable, cgroup limit); 0 = no check. Reported to the coordinator, which checks jobs against it." };
        var insecure = Credentials.InsecureOption;
        var joinToken = new Option<string?>("--join-token-file") { Description = "A file holding a join token: proof for joining instead of a worker certificate (with --ca and an https --coordinator)." };
        var cmd = new Command("worker", "Run a worker that registers with the coordinator (--coordinator) and trains replicas of its jobs. TLS with --tls-dir DIR/worker " +
                                        "(from `dtrain certs init`) and an https coordinator; required when listening beyond loopback. Settings also come from DTRAIN_Worker__* variables.");
        foreach (var o in new Option[] { port, listen, httpPort, advertise, threads, device, name, budget, transport, joinToken }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var options = WorkerHost.ReadOptions(r.UnmatchedTokens.ToArray());
            options = options with
            {
                Coordinator = r.GetValue(Remote.CoordinatorOption) ?? Environment.GetEnvironmentVariable("DTRAIN_COORDINATOR") ?? options.Coordinator,
                Port = r.GetValue(port) ?? options.Port,
                Listen = r.GetValue(listen) ?? options.Listen,
                HttpPort = r.GetValue(httpPort) ?? options.HttpPort,
                AdvertiseHost = r.GetValue(advertise) ?? options.AdvertiseHost,
                Threads = r.GetValue(threads) ?? options.Threads,
                Device = r.GetValue(device) ?? options.Device,
                Name = r.GetValue(name) ?? options.Name,
                MemoryBudgetMb = r.GetValue(budget) ?? options.MemoryBudgetMb,
                Transport = r.GetValue(transport) ?? options.Transport,
                Tls = (options.Tls ?? new TlsSettings()).Over(CliTls.CommandLine(r) with { Insecure = r.GetValue(insecure) }),
                JoinTokenFile = r.GetValue(joinToken) ?? options.JoinTokenFile,
            };
            return WorkerHost.RunAsync(options).GetAwaiter().GetResult();
        }));
        cmd.TreatUnmatchedTokensAsErrors = false;
        return cmd;
    }

    /// <summary>
    /// <see cref="CoordinatorOptions.DefaultHttpPort"/> when it is free on <paramref name="listen"/>; otherwise any free port
    /// (said at start): a second coordinator on the machine, or a test, must not fail because the default is taken.
    /// A port asked for explicitly is never replaced.
    /// </summary>
    static int DefaultHttpPort(string listen)
    {
        try
        {
            using var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Parse(listen), CoordinatorOptions.DefaultHttpPort);
            probe.Start();
            return CoordinatorOptions.DefaultHttpPort;
        }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or FormatException)
        {
            Console.Error.WriteLine($"port {CoordinatorOptions.DefaultHttpPort} (the dashboard's default) is in use: using any free port (set --http-port to choose)");
            return 0;
        }
    }

    static string SecurityLine(CoordinatorSecurity security)
    {
        var tokens = security.JoinTokenCount > 0 ? $"; {security.JoinTokenCount} join token(s)" : "";
        if (security.Tls is { Certificate: { } own } tls)
            return $"TLS: certificate \"{own.Subject}\" for {string.Join(", ", ClusterCertificates.Hosts(own))}, expires {own.NotAfter:yyyy-MM-dd}; " +
                   $"clients and workers need certificates from the CA in {tls.AuthorityPath}{tokens}";
        return security.InsecureWarning is { } warning ? $"WARNING: {warning}" : $"plaintext on loopback (no TLS){tokens}";
    }
}
