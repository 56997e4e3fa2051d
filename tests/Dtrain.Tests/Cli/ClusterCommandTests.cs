using System.Text.RegularExpressions;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Cli;

/// <summary>`dtrain cluster run` / `cluster up`: what they refuse before starting anything, and whose coordinator they use.</summary>
public sealed class ClusterCommandTests
{
    static string TinySpec(TempDir tmp)
    {
        tmp.Write("t.txt", TestJobs.Text());
        return tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2)));
    }

    [Fact]
    public void Workers_threads_and_port_out_of_range_exit_2_naming_the_option_and_range_before_anything_starts()
    {
        using var tmp = new TempDir();
        var spec = TinySpec(tmp);
        foreach (var (args, message) in new (string[], string)[]
                 {
                     (["run", spec, "--workers", "0"], "--workers 0 must be a number of workers from 1 to 64"),
                     (["run", spec, "--workers", "100"], "--workers 100 must be a number of workers from 1 to 64"),
                     (["run", spec, "--threads", "-1"], "--threads -1 must be a number of torch threads per worker from 1 to 1024"),
                     (["run", spec, "--port", "70000"], "--port 70000 must be a TCP port from 1 to 65535, or 0 for any free port"),
                     (["up", "--workers", "0"], "--workers 0 must be a number of workers from 1 to 64"),
                     (["up", "--threads", "0"], "--threads 0 must be a number of torch threads per worker from 1 to 1024"),
                 })
        {
            var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), ["cluster", .. args, "--logs", Path.Combine(tmp.Path, "logs")]);
            Assert.True(r.ExitCode == 2, $"cluster {string.Join(' ', args)}: {r}");
            Assert.Contains($"error: {message}", r.Stderr);
            Assert.DoesNotContain("Exception", r.Stderr);
            Assert.DoesNotContain("starting", r.Stdout);
            Assert.DoesNotContain("cluster up:", r.Stdout);
        }
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "logs")), "a process was started");

        // A pipeline the coordinator would refuse for this many workers: exit 2 naming the field, before anything starts
        // (it used to start the cluster and end in an RpcException, exit 1).
        var pipeline = tmp.Write("pipe.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2) with
        {
            Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        }));
        var refused = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "cluster", "run", pipeline, "--workers", "3", "--logs", Path.Combine(tmp.Path, "logs"));
        Assert.True(refused.ExitCode == 2, refused.ToString());
        Assert.Contains("$.parallelism.pipeline.stages", refused.Stderr);
        Assert.Contains("needs --workers set to a multiple of 2; it is 3", refused.Stderr);
        Assert.DoesNotContain("starting", refused.Stdout);
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "logs")), "a process was started");
    }

    [Fact]
    public async Task Run_and_up_refuse_a_port_another_coordinator_listens_on_instead_of_using_it()
    {
        using var tmp = new TempDir();
        var spec = TinySpec(tmp);
        // Someone else's coordinator with idle workers: before, `cluster run` trained on it (exit 0) and `cluster up`
        // reported it as its own while its own coordinator had died with "address already in use".
        await using var other = await InProcessCluster.StartAsync(2, new CoordinatorOptions { Auth = "off" });
        var port = new Uri(other.Address).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var expected = $"error: --port {port}: something already listens on 127.0.0.1:{port}";

        var run = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), "cluster", "run", spec, "--workers", "2", "--threads", "1", "--port", port, "--logs", Path.Combine(tmp.Path, "run"));
        Assert.True(run.ExitCode == 2, run.ToString());
        Assert.Contains(expected, run.Stderr);
        Assert.DoesNotContain("starting", run.Stdout);

        var (upReady, up) = CliRunner.RunUntil(tmp.Path, TimeSpan.FromMinutes(1), null, line => line.StartsWith("cluster up:", StringComparison.Ordinal),
            "cluster", "up", "--workers", "1", "--threads", "1", "--port", port, "--logs", Path.Combine(tmp.Path, "up"));
        Assert.False(upReady, up.ToString());
        Assert.True(up.ExitCode == 2, up.ToString());
        Assert.Contains(expected, up.Stderr);

        Assert.Empty(other.Client.List(new ListJobsRequest()).Jobs);
    }

    [Fact]
    public void Up_with_a_data_root_trains_a_job_that_names_a_prepared_dataset_under_it_and_refuses_a_missing_one()
    {
        using var tmp = new TempDir();
        var missing = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "cluster", "up", "--workers", "1", "--data-root", Path.Combine(tmp.Path, "nope"));
        Assert.True(missing.ExitCode == 2, missing.ToString());
        Assert.Contains($"--data-root {Path.Combine(tmp.Path, "nope")}: no such directory", missing.Stderr);
        Assert.DoesNotContain("cluster up:", missing.Stdout);

        var (memory, file) = DatasetJobTests.MemoryJob(tmp, TaskKinds.LanguageModel);
        var root = Path.Combine(tmp.Path, "datasets");
        var dataset = DatasetJobTests.Prepare(memory, file, Path.Combine(root, "lm"));
        var spec = tmp.Write("dataset.json", JobSpecSerializer.Serialize(DatasetJobTests.DatasetJob(memory, dataset)));
        CliRunner.Result? submit = null;
        var (ready, up) = CliRunner.RunUntil(tmp.Path, TimeSpan.FromMinutes(4), null, line =>
        {
            if (Regex.Match(line, @"cluster up: coordinator (http://127\.0\.0\.1:\d+),") is not { Success: true } m) return false;
            // The cluster is up: a job naming the dataset by its absolute path trains on it (the output thread waits here).
            submit = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), "submit", spec, "--coordinator", m.Groups[1].Value, "--watch", "--plain");
            return true;
        }, "cluster", "up", "--workers", "1", "--threads", "1", "--port", "0", "--logs", Path.Combine(tmp.Path, "logs"), "--data-root", root);
        Assert.True(ready, up.ToString());
        Assert.Contains($"data roots: {Dtrain.Data.DataFile.RealPath(root)}", up.Stdout);
        Assert.NotNull(submit);
        Assert.True(submit!.ExitCode == 0, submit.ToString());
        Assert.Contains("succeeded", submit.Stdout + submit.Stderr, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void Up_with_port_0_listens_on_a_free_port_of_its_own()
    {
        using var tmp = new TempDir();
        var logs = Path.Combine(tmp.Path, "logs");
        // `cluster up --port 0` used to mean port 5000; any free port comes from the ephemeral range, never 5000.
        var (ready, up) = CliRunner.RunUntil(tmp.Path, TimeSpan.FromMinutes(2), null, line => line.StartsWith("cluster up:", StringComparison.Ordinal),
            "cluster", "up", "--workers", "1", "--threads", "1", "--port", "0", "--logs", logs);
        Assert.True(ready, up.ToString());
        var address = Regex.Match(up.Stdout, @"cluster up: coordinator (http://127\.0\.0\.1:(\d+)),").Groups;
        Assert.True(address[1].Success, up.ToString());
        Assert.NotEqual("5000", address[2].Value);
        Assert.Contains($"coordinator listening on {address[1].Value}", File.ReadAllText(Path.Combine(logs, "coordinator.log")));
    }

    [Fact]
    public void A_chosen_port_taken_before_the_coordinator_listens_is_replaced_by_another_free_port()
    {
        // CI saw "the free port N chosen for the coordinator was taken" (another test's listener got the port between
        // the pick and the coordinator's listen) fail a whole test. The first pick here is a port a listener holds:
        // the cluster starts again on the next pick instead of failing.
        using var tmp = new TempDir();
        using var held = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        held.Start();
        var heldPort = ((System.Net.IPEndPoint)held.LocalEndpoint).Port;
        var picks = 0;
        int Pick()
        {
            if (++picks == 1) return heldPort;
            using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            l.Start();
            return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        }
        var logs = Path.Combine(tmp.Path, "logs");
        using (var cluster = LocalCluster.Start(1, 0, 1, logs, TimeSpan.FromMinutes(2), null, Pick))
        {
            Assert.Equal(2, picks);
            Assert.NotEqual(heldPort, new Uri(cluster.Address).Port);
            var log = File.ReadAllText(Path.Combine(logs, "coordinator.log"));
            Assert.Contains("address already in use", log, StringComparison.OrdinalIgnoreCase); // the first attempt did fail
            Assert.Contains($"coordinator listening on {cluster.Address}", log);
        }

        // Every pick taken: after LocalCluster.PortAttempts tries, the error names the port and says what happened.
        picks = 0;
        var e = Assert.ThrowsAny<ArgumentException>(() => LocalCluster.Start(1, 0, 1, Path.Combine(tmp.Path, "taken"), TimeSpan.FromMinutes(2), null, () => { picks++; return heldPort; }));
        Assert.Equal(LocalCluster.PortAttempts, picks);
        Assert.Contains($"the free port {heldPort} chosen for the coordinator was taken by another process", e.Message);
    }

    [Fact]
    public async Task A_restarted_coordinator_that_cannot_listen_is_reported_not_replaced_by_the_one_that_does()
    {
        using var tmp = new TempDir();
        using var cluster = LocalCluster.Start(1, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2));
        var port = new Uri(cluster.Address).Port;
        cluster.KillCoordinator();
        // Another coordinator takes the port before this cluster's own comes back: its workers would find that one.
        var other = CoordinatorHost.Build(new CoordinatorOptions { Port = port, Auth = "off", HttpPort = -1, DataDir = Path.Combine(tmp.Path, "other") }, l => l.SetMinimumLevel(LogLevel.Warning));
        await other.StartAsync();
        try
        {
            var e = Assert.Throws<ArgumentException>(() => cluster.RestartCoordinator(TimeSpan.FromMinutes(1)));
            Assert.Contains($"port {port}", e.Message);
            Assert.Contains("could listen on it", e.Message);
        }
        finally
        {
            await other.StopAsync();
            await other.DisposeAsync();
        }
    }
}
