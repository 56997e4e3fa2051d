using System.Diagnostics;
using System.Globalization;
using Docker.DotNet.Models;
using DotNet.Testcontainers.Builders;
using DotNet.Testcontainers.Configurations;
using DotNet.Testcontainers.Containers;
using DotNet.Testcontainers.Networks;
using DotNet.Testcontainers.Volumes;
using Xunit.Abstractions;

namespace Dtrain.E2E.Support;

/// <summary>
/// A dtrain cluster in containers, made with Testcontainers from <see cref="ImageFixture.Image"/>, over mutual TLS as
/// deploy/docker-compose.yml runs it: a private network; a one-shot `certs init` container writing the cluster CA and
/// certificates into three volumes (coordinator, worker, client — the client's copied to the host for the CLI,
/// <see cref="ClientTlsDir"/>); a coordinator (`serve --tls-dir`, network alias "coordinator", its port 5000 published
/// on a random 127.0.0.1 port, its data directory on a named volume) and workers (`worker --coordinator
/// https://coordinator:5000 --tls-dir ... --threads auto`, 1 CPU each). All names carry a random suffix;
/// <see cref="DisposeAsync"/> removes every container, the network and the volumes, also after a failed test.
/// </summary>
public sealed class ContainerCluster : IAsyncDisposable
{
    public const string DataDir = "/var/lib/dtrain";
    const long OneCpu = 1_000_000_000;

    readonly ITestOutputHelper output;
    readonly IReadOnlyDictionary<string, string> coordinatorEnv;
    readonly List<IContainer> workers = [];
    readonly string scratch = Directory.CreateTempSubdirectory("dtrain-cluster-tls-").FullName;
    INetwork? network;
    IVolume? volume;
    readonly Dictionary<string, IVolume> certificates = [];
    IContainer? certs;
    IContainer? coordinator;
    int port;

    const string TlsRoot = "/etc/dtrain/tls";
    static readonly string[] Roles = ["coordinator", "worker", "client"];

    ContainerCluster(ITestOutputHelper output, string name, IReadOnlyDictionary<string, string> coordinatorEnv)
    {
        this.output = output;
        Name = name;
        this.coordinatorEnv = coordinatorEnv;
    }

    /// <summary>The prefix of every resource of this cluster (network, volume, container names).</summary>
    public string Name { get; }

    public string VolumeName => $"{Name}-data";

    /// <summary>The coordinator as the host reaches it: https://127.0.0.1:PORT.</summary>
    public string Address => $"https://127.0.0.1:{port}";

    /// <summary>The client certificate directory on the host (ca.crt, tls.crt, tls.key), for DTRAIN_TLS_DIR.</summary>
    public string ClientTlsDir => Path.Combine(scratch, "client");

    /// <summary>A client of the coordinator with the client certificate.</summary>
    public CoordinatorClient NewClient() => new(Address, ClientTlsDir);

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
            await cluster.MakeCertificatesAsync().ConfigureAwait(false);
            await cluster.StartCoordinatorAsync().ConfigureAwait(false);
            for (var i = 0; i < workerCount; i++) await cluster.AddWorkerAsync().ConfigureAwait(false);
            using var client = cluster.NewClient();
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

    /// <summary>`dtrain certs init /etc/dtrain/tls --host coordinator` in a one-shot container, into a volume per role; the client's copied to the host.</summary>
    async Task MakeCertificatesAsync()
    {
        foreach (var role in Roles)
        {
            var v = new VolumeBuilder().WithName($"{Name}-certs-{role}").Build();
            await v.CreateAsync().ConfigureAwait(false);
            certificates[role] = v;
        }
        var builder = new ContainerBuilder(ImageFixture.Image)
            .WithName($"{Name}-certs")
            .WithCommand("certs", "init", TlsRoot, "--host", "coordinator");
        foreach (var role in Roles) builder = builder.WithVolumeMount(certificates[role], $"{TlsRoot}/{role}");
        certs = builder.Build();
        await certs.StartAsync().ConfigureAwait(false);
        var exit = await certs.GetExitCodeAsync().ConfigureAwait(false);
        var (stdout, stderr) = await certs.GetLogsAsync().ConfigureAwait(false);
        Assert.True(exit == 0, $"dtrain certs init in {certs.Name}: exit {exit}\n{stdout}{stderr}");
        await DockerEngine.CheckAsync("cp", $"{certs.Id}:{TlsRoot}/client", ClientTlsDir).ConfigureAwait(false);
        Assert.True(File.Exists(Path.Combine(ClientTlsDir, "tls.key")), $"no client key copied to {ClientTlsDir}");
    }

    async Task StartCoordinatorAsync()
    {
        coordinator = new ContainerBuilder(ImageFixture.Image)
            .WithName($"{Name}-coordinator")
            .WithNetwork(network)
            .WithNetworkAliases("coordinator")
            .WithCommand("serve", "--tls-dir", $"{TlsRoot}/coordinator")
            .WithEnvironment(coordinatorEnv)
            .WithVolumeMount(volume, DataDir)
            .WithVolumeMount(certificates["coordinator"], $"{TlsRoot}/coordinator", AccessMode.ReadOnly)
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
                TimeSpan.FromSeconds(30), env: new Dictionary<string, string> { ["DTRAIN_TLS_DIR"] = ClientTlsDir }).ConfigureAwait(false);
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
            .WithCommand("worker", "--coordinator", "https://coordinator:5000", "--tls-dir", $"{TlsRoot}/worker", "--threads", "auto")
            .WithVolumeMount(certificates["worker"], $"{TlsRoot}/worker", AccessMode.ReadOnly)
            .WithCreateParameterModifier(p => (p.HostConfig ??= new HostConfig()).NanoCPUs = OneCpu)
            .Build();
        workers.Add(worker);
        await worker.StartAsync().ConfigureAwait(false);
        return worker;
    }

    /// <summary>The worker container whose IP address is in the coordinator's address for it (https://IP:7000).</summary>
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
        await Remove("certs", certs).ConfigureAwait(false);
        await Remove("network", network).ConfigureAwait(false);
        await Remove("volume", volume).ConfigureAwait(false);
        foreach (var v in certificates.Values) await Remove("certificate volume", v).ConfigureAwait(false);
        try { Directory.Delete(scratch, recursive: true); } catch (IOException) { }
        // Backstop: anything of this cluster's that Testcontainers did not remove (e.g. after a failed start).
        var left = await DockerEngine.RunAsync("ps", "-aq", "--filter", $"name={Name}-").ConfigureAwait(false);
        foreach (var id in left.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            errors.Add($"left over container {id}: {(await DockerEngine.RunAsync("rm", "-f", "-v", id).ConfigureAwait(false)).ExitCode}");
        await DockerEngine.RunAsync("network", "rm", Name).ConfigureAwait(false);
        await DockerEngine.RunAsync("volume", "rm", VolumeName).ConfigureAwait(false);
        foreach (var role in Roles) await DockerEngine.RunAsync("volume", "rm", $"{Name}-certs-{role}").ConfigureAwait(false);
        output.WriteLine(errors.Count == 0 ? $"cluster {Name} removed" : $"cluster {Name} removed with problems: {string.Join("; ", errors)}");
    }
}
