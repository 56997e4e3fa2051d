using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Security;

/// <summary>
/// Whole clusters over mutual TLS on loopback: jobs train exactly as in plaintext; the CLI needs the cluster CA and its
/// client certificate and says what to do when it lacks them or uses the wrong scheme; servers refuse to listen beyond
/// loopback without TLS unless --insecure, which is then announced to every client.
/// </summary>
public class TlsClusterTests
{
    [Fact]
    public async Task Data_parallel_and_pipelined_jobs_over_mtls_end_exactly_as_in_plaintext()
    {
        using var tmp = new TempDir();
        using var pki = new TestPki();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: 12);
        var dataParallel = tmp.Write("dp.json", JobSpecSerializer.Serialize(spec));
        var pipelined = tmp.Write("pp.json", JobSpecSerializer.Serialize(spec with
        {
            Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        }));

        async Task<List<float[]>> Train(TestPki? tls, string specPath)
        {
            await using var cluster = await InProcessCluster.StartAsync(2, pki: tls);
            Assert.All(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers, w => Assert.StartsWith(tls is null ? "http://" : "https://", w.Address, StringComparison.Ordinal));
            var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(specPath), 2)).JobId;
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"{(tls is null ? "plaintext" : "mTLS")} {Path.GetFileName(specPath)}: {info.State} {info.Message}");
            Assert.Equal(12, info.Step);
            using var model = TrainedModel.Load(cluster.CheckpointFile(info));
            return [.. model.Engine.Parameters.Select(p => p.data<float>().ToArray())];
        }

        foreach (var specPath in new[] { dataParallel, pipelined })
        {
            var plain = await Train(null, specPath);
            var secure = await Train(pki, specPath);
            Assert.Equal(plain.Count, secure.Count);
            for (var i = 0; i < plain.Count; i++) Assert.Equal(plain[i], secure[i]);
        }
    }

    [Fact]
    public async Task The_cli_needs_the_ca_and_a_client_certificate_and_says_what_to_do()
    {
        using var tmp = new TempDir();
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(1, pki: pki);
        var https = cluster.Address;
        var http = "http://" + new Uri(https).Authority;
        // Every CLI call also carries the cluster's admin token: TLS (who connects) and tokens (who acts) are both on.
        Dictionary<string, string> Env(params (string, string)[] pairs)
        {
            var env = pairs.ToDictionary(p => p.Item1, p => p.Item2);
            env["DTRAIN_TOKEN"] = cluster.AdminToken!;
            return env;
        }

        var noCa = TlsCli.Run(tmp.Path, Env(), "workers", "--coordinator", https);
        Assert.True(noCa.ExitCode == 2, noCa.ToString());
        Assert.Contains("is not trusted", noCa.Stderr);
        Assert.Contains("DTRAIN_TLS_DIR", noCa.Stderr);

        var plain = TlsCli.Run(tmp.Path, Env(("DTRAIN_TLS_DIR", pki.ClientDir)), "workers", "--coordinator", http);
        Assert.True(plain.ExitCode == 2, plain.ToString());
        Assert.Contains($"speaks TLS: use {https}", plain.Stderr);

        var caOnly = TlsCli.Run(tmp.Path, Env(("DTRAIN_CA", pki.CaPath)), "workers", "--coordinator", https);
        Assert.True(caOnly.ExitCode == 1, caOnly.ToString());
        Assert.Contains("Unauthenticated", caOnly.Stderr);
        Assert.Contains("needs a client certificate signed by the cluster CA", caOnly.Stderr);

        var asWorker = TlsCli.Run(tmp.Path, Env(), "workers", "--coordinator", https, "--tls-dir", pki.WorkerDir);
        Assert.True(asWorker.ExitCode == 1, asWorker.ToString());
        Assert.Contains("PermissionDenied", asWorker.Stderr);

        var viaEnv = TlsCli.Run(tmp.Path, Env(("DTRAIN_TLS_DIR", pki.ClientDir), ("DTRAIN_COORDINATOR", https)), "workers");
        Assert.True(viaEnv.ExitCode == 0, viaEnv.ToString());
        Assert.Contains("idle", viaEnv.Stdout);
        var viaOptions = TlsCli.Run(tmp.Path, Env(), "list", "--coordinator", https, "--ca", pki.CaPath,
            "--cert", Path.Combine(pki.ClientDir, TlsSettings.CertFile), "--key", Path.Combine(pki.ClientDir, TlsSettings.KeyFile));
        Assert.True(viaOptions.ExitCode == 0, viaOptions.ToString());

        // Health needs only the CA, of the coordinator and of a worker (whose certificate the coordinator issued).
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single().Address;
        foreach (var server in new[] { https, worker })
        {
            var health = TlsCli.Run(tmp.Path, Env(("DTRAIN_CA", pki.CaPath)), "health", server);
            Assert.True(health.ExitCode == 0, health.ToString());
            Assert.Contains("SERVING", health.Stdout);
        }
        // In a container the server's address file names its CA: `dtrain health` without arguments checks with it.
        var addressFile = tmp.Write("address", $"{https}\n{GrpcServerHost.AddressFileCaPrefix}{pki.CaPath}\n");
        var self = TlsCli.Run(tmp.Path, Env((GrpcServerHost.AddressFileVariable, addressFile)), "health", "--service", CoordinatorHost.ReadinessService);
        Assert.True(self.ExitCode == 0, self.ToString());
    }

    [Fact]
    public void Servers_refuse_to_listen_beyond_loopback_without_tls_unless_insecure()
    {
        using var tmp = new TempDir();
        var coordinator = Assert.Throws<ArgumentException>(() => CoordinatorHost.Build(new CoordinatorOptions { Listen = "0.0.0.0", Port = 0, DataDir = tmp.Path }));
        Assert.Contains("TLS is required", coordinator.Message);
        Assert.Contains("--insecure", coordinator.Message);
        var worker = Assert.Throws<ArgumentException>(() => WorkerHost.Build(new WorkerOptions { Listen = "0.0.0.0" }));
        Assert.Contains("TLS is required", worker.Message);
        var https = Assert.Throws<ArgumentException>(() => WorkerHost.Build(new WorkerOptions { Coordinator = "https://10.0.0.1:5000" }));
        Assert.Contains("give the cluster CA", https.Message);

        var cli = CliRunner.Run(tmp.Path, "serve", "--listen", "0.0.0.0", "--port", "0", "--data-dir", tmp.Path);
        Assert.True(cli.ExitCode == 2, cli.ToString());
        Assert.Contains("TLS is required", cli.Stderr);
    }

    [Fact]
    public async Task An_insecure_coordinator_beyond_loopback_is_announced_to_every_client()
    {
        using var tmp = new TempDir();
        await using var app = CoordinatorHost.Build(new CoordinatorOptions { Listen = "0.0.0.0", Port = 0, DataDir = tmp.Path, Tls = new TlsSettings { Insecure = true }, Auth = "off" },
            l => l.ClearProviders());
        await app.StartAsync();
        var address = CoordinatorHost.Address(app);
        Assert.StartsWith("http://127.0.0.1:", address, StringComparison.Ordinal);
        var workers = TlsCli.Run(tmp.Path, new Dictionary<string, string>(), "workers", "--coordinator", address);
        Assert.True(workers.ExitCode == 0, workers.ToString());
        Assert.Contains("warning:", workers.Stderr);
        Assert.Contains("without TLS or authentication (--insecure)", workers.Stderr);
        await app.StopAsync();

        // On loopback, plaintext is the normal local set-up: no warning.
        await using var local = CoordinatorHost.Build(new CoordinatorOptions { Port = 0, DataDir = tmp.Path }, l => l.ClearProviders());
        await local.StartAsync();
        var quiet = TlsCli.Run(tmp.Path, new Dictionary<string, string>(), "workers", "--coordinator", CoordinatorHost.Address(local));
        Assert.True(quiet.ExitCode == 0, quiet.ToString());
        Assert.DoesNotContain("warning", quiet.Stderr);
        await local.StopAsync();
    }

    [Fact]
    public void Tls_and_join_token_settings_bind_like_the_other_options_and_the_command_line_wins()
    {
        var c = CoordinatorHost.ReadOptions(["--Coordinator:Tls:Dir=/x/coordinator", "--Coordinator:Tls:CaKey=/x/ca.key", "--Coordinator:Tls:Insecure=true",
            "--Coordinator:JoinTokens:0=aaaaaaaaaaaaaaaa", "--Coordinator:JoinTokens:1=bbbbbbbbbbbbbbbb", "--Coordinator:JoinTokenFile=/x/tokens"]);
        Assert.Equal(("/x/coordinator", "/x/ca.key", true), (c.Tls.Dir, c.Tls.CaKey, c.Tls.Insecure));
        Assert.Equal(["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"], c.JoinTokens);
        Assert.Equal("/x/tokens", c.JoinTokenFile);
        var w = WorkerHost.ReadOptions(["--Worker:Tls:Ca=/x/ca.crt", "--Worker:Tls:Cert=/x/w.crt", "--Worker:Tls:Key=/x/w.key", "--Worker:JoinToken=cccccccccccccccc"]);
        Assert.Equal(("/x/ca.crt", "/x/w.crt", "/x/w.key", "cccccccccccccccc"), (w.Tls.Ca, w.Tls.Cert, w.Tls.Key, w.JoinToken));

        using var tmp = new TempDir();
        var r = CliRunner.Run(tmp.Path, "serve", "--port", "0", "--data-dir", tmp.Path, "--tls-dir", Path.Combine(tmp.Path, "given"), $"--Coordinator:Tls:Dir={Path.Combine(tmp.Path, "configured")}");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains(Path.Combine(tmp.Path, "given", "ca.crt"), r.Stderr);
        var worker = CliRunner.Run(tmp.Path, "worker", "--coordinator", "https://127.0.0.1:1", $"--Worker:Tls:Dir={Path.Combine(tmp.Path, "configured")}");
        Assert.True(worker.ExitCode == 2, worker.ToString());
        Assert.Contains($"Worker:Tls: {Path.Combine(tmp.Path, "configured", "ca.crt")} not found", worker.Stderr);
    }

    [Fact]
    public void Tls_settings_errors_name_the_file_and_the_setting()
    {
        using var tmp = new TempDir();
        using var pki = new TestPki();
        var missing = Assert.Throws<ArgumentException>(() => CoordinatorHost.Build(new CoordinatorOptions { Port = 0, DataDir = tmp.Path, Tls = new TlsSettings { Dir = tmp.Path } }));
        Assert.Contains($"Coordinator:Tls: {Path.Combine(tmp.Path, "ca.crt")} not found", missing.Message);
        // A worker certificate cannot serve as the coordinator; a client certificate cannot join as a worker.
        var asCoordinator = Assert.Throws<ArgumentException>(() => CoordinatorHost.Build(new CoordinatorOptions
        {
            Port = 0, DataDir = tmp.Path,
            Tls = new TlsSettings { Dir = pki.CoordinatorDir, Cert = Path.Combine(pki.WorkerDir, "tls.crt"), Key = Path.Combine(pki.WorkerDir, "tls.key") },
        }));
        Assert.Contains("is a worker certificate", asCoordinator.Message);
        var asWorker = Assert.Throws<ArgumentException>(() => WorkerHost.Build(new WorkerOptions { Coordinator = "https://127.0.0.1:5000", Tls = new TlsSettings { Dir = pki.ClientDir } }));
        Assert.Contains("is a client certificate", asWorker.Message);
        var withoutKey = Assert.Throws<ArgumentException>(() => CoordinatorHost.Build(new CoordinatorOptions
        {
            Port = 0, DataDir = tmp.Path,
            Tls = new TlsSettings { Ca = pki.CaPath, Cert = Path.Combine(pki.CoordinatorDir, "tls.crt"), Key = Path.Combine(pki.CoordinatorDir, "tls.key") },
        }));
        Assert.Contains("CA's private key", withoutKey.Message);
        var shortToken = Assert.Throws<ArgumentException>(() => CoordinatorHost.Build(new CoordinatorOptions { Port = 0, DataDir = tmp.Path, JoinTokens = ["short"] }));
        Assert.Contains("Coordinator:JoinTokens:0", shortToken.Message);
    }
}
