using System.Diagnostics;
using System.Globalization;
using Docker.DotNet.Models;
using DotNet.Testcontainers.Builders;
using DotNet.Testcontainers.Containers;
using DotNet.Testcontainers.Networks;
using DotNet.Testcontainers.Volumes;
using Xunit.Abstractions;

namespace Dtrain.E2E.Support;

/// <summary>
/// A dtrain cluster in containers, made with Testcontainers from <see cref="ImageFixture.Image"/>: a private network,
/// a coordinator (`serve`, network alias "coordinator", its port 5000 published on a random 127.0.0.1 port, its data
/// directory on a named volume) and workers (`worker --coordinator http://coordinator:5000 --threads auto`, 1 CPU
/// each). All names carry a random suffix; <see cref="DisposeAsync"/> removes every container, the network and the
/// volume, also after a failed test.
/// </summary>
public sealed class ContainerCluster : IAsyncDisposable
{
    public const string DataDir = "/var/lib/dtrain";
    const long OneCpu = 1_000_000_000;

    readonly ITestOutputHelper output;
    readonly IReadOnlyDictionary<string, string> coordinatorEnv;
    readonly List<IContainer> workers = [];
    INetwork? network;
    IVolume? volume;
    IContainer? coordinator;
    int port;

    ContainerCluster(ITestOutputHelper output, string name, IReadOnlyDictionary<string, string> coordinatorEnv)
    {
        this.output = output;
        Name = name;
        this.coordinatorEnv = coordinatorEnv;
    }

    /// <summary>The prefix of every resource of this cluster (network, volume, container names).</summary>
    public string Name { get; }

    public string VolumeName => $"{Name}-data";

    /// <summary>The coordinator as the host reaches it: http://127.0.0.1:PORT.</summary>
    public string Address => $"http://127.0.0.1:{port}";

    public IContainer Coordinator => coordinator ?? throw new InvalidOperationException("not started");

    public IReadOnlyList<IContainer> Workers => workers;

    /// <summary>
    /// Starts the network, the volume, the coordinator (healthy and accepting jobs) and <paramref name="workerCount"/>
    /// workers, and waits until they are registered and idle. On failure, logs are printed and everything is removed.
    /// </summary>
    public static async Task<ContainerCluster> StartAsync(ITestOutputHelper output, string purpose, int workerCount, IReadOnlyDictionary<string, string>? coordinatorEnv = null)
    {
        // The coordinator listens on 0.0.0.0 in its container, so its auth would be on: these clusters test training,
        // membership and restarts with auth off, explicitly (ComposeTests goes through tokens as the README does).
        var env = new Dictionary<string, string>(coordinatorEnv ?? new Dictionary<string, string>());
        env.TryAdd("DTRAIN_Coordinator__Auth", "off");
        var cluster = new ContainerCluster(output, UniqueName.For(purpose), env);
        try
        {
            var clock = Stopwatch.StartNew();
            cluster.network = new NetworkBuilder().WithName(cluster.Name).Build();
            await cluster.network.CreateAsync().ConfigureAwait(false);
            cluster.volume = new VolumeBuilder().WithName(cluster.VolumeName).Build();
            await cluster.volume.CreateAsync().ConfigureAwait(false);
            await cluster.StartCoordinatorAsync().ConfigureAwait(false);
            for (var i = 0; i < workerCount; i++) await cluster.AddWorkerAsync().ConfigureAwait(false);
            using var client = new CoordinatorClient(cluster.Address);
            var idle = await client.WaitForIdleWorkersAsync(workerCount, TimeSpan.FromSeconds(90)).ConfigureAwait(false);
            output.WriteLine($"cluster {cluster.Name} up in {clock.Elapsed.TotalSeconds:F1} s at {cluster.Address}: {CoordinatorClient.Describe(idle)}");
            return cluster;
        }
        catch
        {
            await cluster.PrintLogsAsync().ConfigureAwait(false);
            await cluster.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    async Task StartCoordinatorAsync()
    {
        coordinator = new ContainerBuilder(ImageFixture.Image)
            .WithName($"{Name}-coordinator")
            .WithNetwork(network)
            .WithNetworkAliases("coordinator")
            .WithCommand("serve")
            .WithEnvironment(coordinatorEnv)
            .WithVolumeMount(volume, DataDir)
            .WithPortBinding(5000, assignRandomHostPort: true)
            // Published on loopback only (Testcontainers binds every interface by default).
            .WithCreateParameterModifier(p =>
            {
                foreach (var bindings in p.HostConfig?.PortBindings?.Values ?? [])
                    foreach (var b in bindings) b.HostIP = "127.0.0.1";
            })
            // The image's HEALTHCHECK (`dtrain health`, probing every second while starting).
            .WithWaitStrategy(Wait.ForUnixContainer().UntilContainerIsHealthy(3, s => s.WithTimeout(TimeSpan.FromMinutes(2))))
            .Build();
        await coordinator.StartAsync().ConfigureAwait(false);
        await ReadPublishedPortAsync().ConfigureAwait(false);
        Assert.Equal(coordinator.GetMappedPublicPort(5000), port);
        await WaitForJobsServiceAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
    }

    /// <summary>Polls `dtrain health ADDRESS --service dtrain.jobs.v1.Jobs` from the host until it exits 0 (SERVING).</summary>
    public async Task WaitForJobsServiceAsync(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        ProcessResult? last = null;
        while (clock.Elapsed < timeout)
        {
            last = await ProcessRunner.RunAsync("dotnet", ["exec", Path.Combine(AppContext.BaseDirectory, "dtrain.dll"), "health", Address, "--service", "dtrain.jobs.v1.Jobs", "--timeout", "3"],
                TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            if (last.ExitCode == 0)
            {
                output.WriteLine($"coordinator healthy after {clock.Elapsed.TotalSeconds:F1} s: {last.Stdout.Trim()}");
                return;
            }
            await Task.Delay(500).ConfigureAwait(false);
        }
        Assert.Fail($"coordinator {Address} did not report dtrain.jobs.v1.Jobs SERVING within {timeout.TotalSeconds:F0} s\n{last}");
    }

    /// <summary>Starts one more worker container (1 CPU, --threads auto); does not wait for it to register.</summary>
    public async Task<IContainer> AddWorkerAsync()
    {
        var worker = new ContainerBuilder(ImageFixture.Image)
            .WithName($"{Name}-worker-{workers.Count + 1}")
            .WithNetwork(network)
            .WithCommand("worker", "--coordinator", "http://coordinator:5000", "--threads", "auto")
            .WithCreateParameterModifier(p => (p.HostConfig ??= new HostConfig()).NanoCPUs = OneCpu)
            .Build();
        workers.Add(worker);
        await worker.StartAsync().ConfigureAwait(false);
        return worker;
    }

    /// <summary>The worker container whose IP address is in the coordinator's address for it (http://IP:7000).</summary>
    public IContainer WorkerAt(string address)
    {
        var host = new Uri(address).Host;
        var matches = workers.Where(w => w.IpAddress == host).ToList();
        Assert.True(matches.Count == 1, $"{matches.Count} worker containers have the address {address}: {string.Join(", ", workers.Select(w => $"{w.Name} {w.IpAddress}"))}");
        return matches[0];
    }

    /// <summary>`docker restart` of the coordinator (SIGTERM, then a new start on the same volume); re-reads its published port.</summary>
    public async Task RestartCoordinatorAsync()
    {
        await DockerEngine.CheckAsync("restart", "-t", "30", Coordinator.Id).ConfigureAwait(false);
        await ReadPublishedPortAsync().ConfigureAwait(false);
    }

    /// <summary>The coordinator's port 5000 as published (`docker port`): on 127.0.0.1 only; a restart may change the host port.</summary>
    async Task ReadPublishedPortAsync()
    {
        var mapped = await DockerEngine.CheckAsync("port", Coordinator.Id, "5000/tcp").ConfigureAwait(false);
        var bindings = mapped.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.True(bindings.Length > 0 && bindings.All(b => b.StartsWith("127.0.0.1:", StringComparison.Ordinal)), $"port 5000 is published on {string.Join(", ", bindings)}, not only on 127.0.0.1");
        port = int.Parse(bindings[0][(bindings[0].LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture);
    }

    /// <summary>Prints every container's log (the last lines of each) to the test output.</summary>
    public async Task PrintLogsAsync()
    {
        foreach (var c in new[] { coordinator }.Concat(workers).OfType<IContainer>())
        {
            try
            {
                var (stdout, stderr) = await c.GetLogsAsync(timestampsEnabled: true).ConfigureAwait(false);
                output.WriteLine($"===== logs of {c.Name} ({c.IpAddress}, {c.State}) =====");
                output.WriteLine(Tail(stdout + stderr, 150));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                output.WriteLine($"===== no logs of {c.Name}: {e.Message}");
            }
        }
    }

    /// <summary>Runs a test body; on failure prints the containers' logs before rethrowing.</summary>
    public async Task RunAsync(Func<Task> body)
    {
        try
        {
            await body().ConfigureAwait(false);
        }
        catch
        {
            await PrintLogsAsync().ConfigureAwait(false);
            throw;
        }
    }

    static string Tail(string text, int lines)
    {
        var all = text.TrimEnd().Split('\n');
        return all.Length <= lines ? string.Join('\n', all) : $"... ({all.Length - lines} earlier lines)\n{string.Join('\n', all[^lines..])}";
    }

    /// <summary>Removes the workers, the coordinator, the network and the volume (each attempted even when another fails).</summary>
    public async ValueTask DisposeAsync()
    {
        var errors = new List<string>();
        async Task Remove(string what, IAsyncDisposable? resource)
        {
            if (resource is null) return;
            try { await resource.DisposeAsync().ConfigureAwait(false); }
            catch (Exception e) when (e is not OutOfMemoryException) { errors.Add($"{what}: {e.Message}"); }
        }
        foreach (var w in workers) await Remove("worker", w).ConfigureAwait(false);
        await Remove("coordinator", coordinator).ConfigureAwait(false);
        await Remove("network", network).ConfigureAwait(false);
        await Remove("volume", volume).ConfigureAwait(false);
        // Backstop: anything of this cluster's that Testcontainers did not remove (e.g. after a failed start).
        var left = await DockerEngine.RunAsync("ps", "-aq", "--filter", $"name={Name}-").ConfigureAwait(false);
        foreach (var id in left.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            errors.Add($"left over container {id}: {(await DockerEngine.RunAsync("rm", "-f", "-v", id).ConfigureAwait(false)).ExitCode}");
        await DockerEngine.RunAsync("network", "rm", Name).ConfigureAwait(false);
        await DockerEngine.RunAsync("volume", "rm", VolumeName).ConfigureAwait(false);
        output.WriteLine(errors.Count == 0 ? $"cluster {Name} removed" : $"cluster {Name} removed with problems: {string.Join("; ", errors)}");
    }
}
