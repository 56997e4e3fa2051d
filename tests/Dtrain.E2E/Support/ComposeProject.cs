using System.Net;
using System.Net.Sockets;
using Xunit.Abstractions;

namespace Dtrain.E2E.Support;

/// <summary>
/// deploy/docker-compose.yml as a user runs it, under a unique project name (-p) with DTRAIN_IMAGE=dtrain:e2e and the
/// coordinator published on a free loopback port, over TLS: <see cref="ClientTlsAsync"/> copies the client certificate
/// out of the coordinator as the README says (`docker compose cp`). <see cref="DisposeAsync"/> runs `down -v` unless the test did.
/// </summary>
public sealed class ComposeProject(ITestOutputHelper output) : IAsyncDisposable
{
    readonly string scratch = Directory.CreateTempSubdirectory("dtrain-compose-").FullName;
    string? clientTls;

    public string Name { get; } = UniqueName.For("compose");

    public int Port { get; } = FreeLoopbackPort();

    /// <summary>
    /// The dashboard's published port (DTRAIN_HTTP_PORT): a free one too, not the default 8265, so that a test never
    /// fails on a port some other process of the machine holds (a user's dashboard, or a project a killed run left).
    /// </summary>
    public int HttpPort { get; } = FreeLoopbackPort();

    public string Address => $"https://127.0.0.1:{Port}";

    /// <summary>
    /// The client certificate directory (ca.crt, tls.crt, tls.key) for the CLI on the host:
    /// `docker compose cp coordinator:/etc/dtrain/tls/client DIR`, once the coordinator runs.
    /// </summary>
    public async Task<string> ClientTlsAsync()
    {
        if (clientTls is not null) return clientTls;
        var target = Path.Combine(scratch, "client");
        await CheckAsync(TimeSpan.FromSeconds(60), "cp", "coordinator:/etc/dtrain/tls/client", target).ConfigureAwait(false);
        foreach (var file in new[] { "ca.crt", "tls.crt", "tls.key" })
            Assert.True(File.Exists(Path.Combine(target, file)), $"`compose cp` of the client certificates gave no {file} in {target}");
        return clientTls = target;
    }

    public bool IsDown { get; private set; }

    /// <summary>More variables for compose (a profile's settings, S3 credentials); set before `up`.</summary>
    public Dictionary<string, string> Environment { get; } = new(StringComparer.Ordinal);

    Dictionary<string, string> Env => new(Environment)
    {
        ["DTRAIN_IMAGE"] = ImageFixture.Image,
        ["DTRAIN_PORT"] = Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["DTRAIN_HTTP_PORT"] = HttpPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["DTRAIN_BIND"] = "127.0.0.1",
    };

    /// <summary>`docker compose -f deploy/docker-compose.yml -p NAME ARGS...` (printed with its output).</summary>
    public async Task<ProcessResult> RunAsync(TimeSpan timeout, params string[] args)
    {
        var r = await ProcessRunner.RunAsync("docker", ["compose", "-f", RepoFiles.PathOf("deploy", "docker-compose.yml"), "-p", Name, .. args], timeout, RepoFiles.Root, Env)
            .ConfigureAwait(false);
        output.WriteLine($"[{DateTime.Now:HH:mm:ss}] docker compose -p {Name} {string.Join(' ', args)}: exit {r.ExitCode} in {r.Elapsed.TotalSeconds:F1} s");
        foreach (var text in new[] { r.Stdout, r.Stderr })
            if (text.Trim().Length > 0) output.WriteLine(string.Join('\n', text.TrimEnd().Split('\n').Select(l => "    " + l)));
        return r;
    }

    public async Task<ProcessResult> CheckAsync(TimeSpan timeout, params string[] args)
    {
        var r = await RunAsync(timeout, args).ConfigureAwait(false);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    /// <summary>`compose exec -T coordinator dtrain tokens create --role admin --name NAME`, as docs/deploy.md says; returns the token.</summary>
    public async Task<string> CreateAdminTokenAsync(string name)
    {
        var r = await CheckAsync(TimeSpan.FromSeconds(60), "exec", "-T", "coordinator", "dtrain", "tokens", "create", "--role", "admin", "--name", name).ConfigureAwait(false);
        var token = r.Stdout.Trim();
        Assert.True(token.StartsWith("dtr_", StringComparison.Ordinal), $"`dtrain tokens create` printed no token\n{r}");
        return token;
    }

    /// <summary>Ids of the service's running containers (`compose ps -q SERVICE`).</summary>
    public async Task<IReadOnlyList<string>> ContainerIdsAsync(string service)
    {
        var r = await CheckAsync(TimeSpan.FromSeconds(60), "ps", "-q", service).ConfigureAwait(false);
        return r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
    }

    /// <summary>Containers, networks and volumes that carry this project's label (com.docker.compose.project=NAME).</summary>
    public async Task<(string[] Containers, string[] Networks, string[] Volumes)> LabelledResourcesAsync()
    {
        var label = $"label=com.docker.compose.project={Name}";
        async Task<string[]> Ids(params string[] args)
        {
            var r = await DockerEngine.CheckAsync(args).ConfigureAwait(false);
            return r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        }
        return (await Ids("ps", "-a", "-q", "--filter", label).ConfigureAwait(false),
                await Ids("network", "ls", "-q", "--filter", label).ConfigureAwait(false),
                await Ids("volume", "ls", "-q", "--filter", label).ConfigureAwait(false));
    }

    public async Task<ProcessResult> DownAsync()
    {
        var r = await RunAsync(TimeSpan.FromMinutes(3), "down", "-v", "--remove-orphans", "-t", "30").ConfigureAwait(false);
        if (r.ExitCode == 0) IsDown = true;
        return r;
    }

    public async Task PrintLogsAsync()
    {
        var r = await ProcessRunner.RunAsync("docker", ["compose", "-f", RepoFiles.PathOf("deploy", "docker-compose.yml"), "-p", Name, "logs", "--no-color", "--timestamps", "--tail", "200"],
            TimeSpan.FromSeconds(60), RepoFiles.Root, Env).ConfigureAwait(false);
        output.WriteLine($"===== docker compose -p {Name} logs =====\n{r.Stdout}{r.Stderr}");
    }

    public async ValueTask DisposeAsync()
    {
        if (!IsDown) await DownAsync().ConfigureAwait(false);
        try { Directory.Delete(scratch, recursive: true); } catch (IOException) { }
        var (containers, networks, volumes) = await LabelledResourcesAsync().ConfigureAwait(false);
        // Backstop for a failed `down`: remove by label whatever is left.
        foreach (var id in containers) await DockerEngine.RunAsync("rm", "-f", "-v", id).ConfigureAwait(false);
        foreach (var id in networks) await DockerEngine.RunAsync("network", "rm", id).ConfigureAwait(false);
        foreach (var id in volumes) await DockerEngine.RunAsync("volume", "rm", "-f", id).ConfigureAwait(false);
        if (containers.Length + networks.Length + volumes.Length > 0)
            output.WriteLine($"removed leftovers of {Name}: {containers.Length} container(s), {networks.Length} network(s), {volumes.Length} volume(s)");
    }

    public static int FreeLoopbackPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
