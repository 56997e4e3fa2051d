using Dtrain.Cluster;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Worker ids and names cannot be confused: ids (w1, w2, ...) are the coordinator's, a name never has their form, one
/// live worker holds a name at a time, and `dtrain workers` shows both.
/// </summary>
public class OpsWorkerNamesTests
{
    static WorkerRegistry NewRegistry(CoordinatorOptions? options = null) => new(options ?? new CoordinatorOptions(), TimeProvider.System, NullLogger<WorkerRegistry>.Instance);

    static WorkerRegistration At(string address, string name = "") => new(address, name, WorkerCapabilities.Unknown with { Cores = 1 });

    [Theory]
    [InlineData("w2")]
    [InlineData("W17")]
    [InlineData("w0")]
    public void A_name_of_the_form_of_an_id_is_refused_by_the_coordinator_and_by_the_worker(string name)
    {
        var registry = NewRegistry();
        var e = Assert.Throws<ArgumentException>(() => registry.Register(At("http://10.0.0.1:7000", name)));
        Assert.Contains($"worker name \"{name}\" has the form of a worker id", e.Message);
        Assert.Empty(registry.Snapshot());
        var error = Assert.Single(new WorkerOptions { Name = name }.Validate());
        Assert.StartsWith("Worker:Name (--name): ", error);
        Assert.Contains("has the form of a worker id", error);
    }

    [Theory]
    [InlineData("-x")]
    [InlineData("a b")]
    [InlineData("gpu/1")]
    public void A_malformed_name_is_refused_naming_it(string name)
    {
        var e = Assert.Throws<ArgumentException>(() => NewRegistry().Register(At("http://10.0.0.1:7000", name)));
        Assert.Contains($"worker name \"{name}\" must be 1 to 63 letters", e.Message);
    }

    [Fact]
    public void A_name_is_held_by_one_live_worker_the_holders_own_address_replaces_it_and_a_lost_ones_name_is_free()
    {
        var registry = NewRegistry();
        var first = registry.Register(At("http://10.0.0.1:7000", "gpu-a"));
        registry.Heartbeat(first.Id, first.Token);
        Assert.Equal("w1", first.Id);
        Assert.Equal("gpu-a", first.Name);

        // Another address: a second worker with the same name is refused, naming the holder.
        var taken = Assert.Throws<WorkerNameTakenException>(() => registry.Register(At("http://10.0.0.2:7000", "gpu-a")));
        Assert.Contains("worker name \"gpu-a\" is held by worker w1 at http://10.0.0.1:7000 (idle", taken.Message);
        Assert.Single(registry.Snapshot());

        // The holder's own address: the same worker restarted; the old registration is lost (its job learns so).
        var lost = new List<string>();
        registry.WorkerLost += w => lost.Add(w.Id);
        var again = registry.Register(At("http://10.0.0.1:7000", "gpu-a"));
        Assert.Equal("w2", again.Id); // a refused registration takes no id; ids are never reused
        Assert.Equal(new[] { "w1" }, lost);
        Assert.Equal(MembershipState.Lost, registry.StateOf("w1"));

        // Now that w1 is lost, its name is w3's; once w3 is lost too the name is free for anyone.
        registry.MarkLost(again.Id, "test");
        var other = registry.Register(At("http://10.0.0.9:7000", "gpu-a"));
        Assert.Equal("gpu-a", other.Name);
        Assert.Equal(3, registry.Snapshot().Count(w => w.Name == "gpu-a"));
        Assert.Single(registry.Snapshot(), w => w.Name == "gpu-a" && w.State != MembershipState.Lost);
    }

    [Fact]
    public void A_worker_without_a_name_has_none_and_ids_are_never_handed_out_twice()
    {
        var registry = NewRegistry();
        var a = registry.Register(At("http://10.0.0.1:7000"));
        registry.Leave(a.Id, a.Token, "bye");
        var b = registry.Register(At("http://10.0.0.1:7000"));
        Assert.Equal("", a.Name);
        Assert.Equal(("w1", "w2"), (a.Id, b.Id));
    }

    [Fact]
    public void Registrations_beyond_Coordinator_MaxWorkers_are_refused_and_a_lost_worker_makes_room()
    {
        var registry = NewRegistry(new CoordinatorOptions { MaxWorkers = 2 });
        var a = registry.Register(At("http://10.0.0.1:7000"));
        registry.Register(At("http://10.0.0.2:7000"));
        var full = Assert.Throws<ClusterFullException>(() => registry.Register(At("http://10.0.0.3:7000")));
        Assert.Contains("the cluster is full: 2 workers are registered and Coordinator:MaxWorkers is 2", full.Message);
        registry.MarkLost(a.Id, "test");
        Assert.Equal("w3", registry.Register(At("http://10.0.0.3:7000")).Id);
    }

    static async Task<Microsoft.AspNetCore.Builder.WebApplication> StartWorker(string coordinator, string name)
    {
        var app = WorkerHost.Build(new WorkerOptions { Coordinator = coordinator, Port = 0, Threads = "1", Name = name }, l => l.SetMinimumLevel(LogLevel.Warning));
        await app.StartAsync();
        return app;
    }

    [Fact]
    public async Task A_second_worker_with_a_taken_name_waits_unregistered_and_joins_once_the_holder_leaves_and_the_listing_shows_names()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var holder = await StartWorker(cluster.Address, "gpu-a");
        await using var __ = holder;
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        var second = await StartWorker(cluster.Address, "gpu-a");
        await using var ___ = second;
        // The second keeps asking (refused with ALREADY_EXISTS) while the first holds the name.
        await Task.Delay(1500);
        var listed = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers;
        Assert.Equal(2, listed.Count);
        var first = Assert.Single(listed, w => w.Name == "gpu-a");

        var env = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken, ["COLUMNS"] = "250" };
        var table = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), env, "workers", "--coordinator", cluster.Address);
        Assert.True(table.ExitCode == 0, table.ToString());
        Assert.Matches(@"│\s*worker\s*│\s*name\s*│\s*address", table.Stdout);
        Assert.Matches($@"│\s*{first.WorkerId}\s*│\s*gpu-a\s*│", table.Stdout);
        Assert.Matches(@"│\s*w1\s*│\s*test-1\s*│", table.Stdout);

        await holder.StopAsync();
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Any(w => w.Name == "gpu-a" && w.WorkerId != first.WorkerId && w.State == WorkerState.Idle))
        {
            Assert.True(DateTime.UtcNow < deadline, "the second gpu-a never registered after the first left");
            await Task.Delay(100);
        }
        Assert.DoesNotContain(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers, w => w.WorkerId == first.WorkerId);
    }

    [Fact]
    public void Dtrain_worker_with_a_name_of_the_form_of_an_id_exits_2_naming_the_option()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "worker", "--coordinator", "http://127.0.0.1:1", "--name", "w2");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("Worker:Name (--name): worker name \"w2\" has the form of a worker id", r.Stderr);
    }
}
