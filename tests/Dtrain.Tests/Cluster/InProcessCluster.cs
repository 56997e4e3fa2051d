using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Tests.Security;
using Dtrain.Worker;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A real coordinator and real workers (Kestrel on loopback, port 0) inside the test process; with a <see cref="TestPki"/>,
/// everything runs over mutual TLS (the coordinator with DIR/coordinator, workers joining with DIR/worker, this client with DIR/client).
/// </summary>
public sealed class InProcessCluster : IAsyncDisposable
{
    private WebApplication coordinator;
    private readonly CoordinatorOptions options;
    private readonly List<WebApplication> workers = [];
    private readonly GrpcChannel channel;

    public string Address { get; }
    /// <summary>The dashboard's http://127.0.0.1:PORT when the options set Coordinator:HttpPort (0 = any free port); null otherwise.</summary>
    public string? HttpAddress => CoordinatorHost.HttpAddress(coordinator);
    public string DataDir { get; }
    /// <summary>Sends <see cref="AdminToken"/> when there is one.</summary>
    public Jobs.JobsClient Client { get; }
    /// <summary>An admin token created before the coordinator started (null with Coordinator:Auth=off).</summary>
    public string? AdminToken { get; }
    public TestPki? Pki { get; }

    private InProcessCluster(WebApplication coordinator, CoordinatorOptions options, string address, string dataDir, string? adminToken, TestPki? pki)
    {
        this.coordinator = coordinator;
        this.options = options;
        Address = address;
        DataDir = dataDir;
        AdminToken = adminToken;
        Pki = pki;
        channel = Channels.Create(address, pki?.TlsOf(pki.ClientDir), ExpectedPeer.Coordinator,
            new GrpcChannelOptions { MaxReceiveMessageSize = 256 << 20, MaxSendMessageSize = 256 << 20 });
        Client = ClientFor(adminToken);
    }

    /// <summary>The coordinator's services (its <see cref="DataAccess"/>, <see cref="UploadStore"/>, ...).</summary>
    public IServiceProvider Services => coordinator.Services;

    /// <summary>
    /// Starts the coordinator and <paramref name="workers"/> workers. Unless <paramref name="options"/> sets
    /// Coordinator:Auth=off, an admin token is created in the data directory first — so auth is on, even on loopback —
    /// and <see cref="Client"/> sends it: every cluster test also exercises the admin role. With <paramref name="pki"/>, TLS is on.
    /// </summary>
    /// <param name="services">Replaces coordinator services, e.g. its clock with a fake one.</param>
    public static async Task<InProcessCluster> StartAsync(int workers, CoordinatorOptions? options = null, Action<IServiceCollection>? services = null, TestPki? pki = null)
    {
        var dataDir = Directory.CreateTempSubdirectory("dtrain-cluster-").FullName;
        options = (options ?? new CoordinatorOptions()) with { Port = 0, DataDir = dataDir };
        if (pki is not null) options = options with { Tls = new TlsSettings { Dir = pki.CoordinatorDir } };
        var adminToken = options.Auth == "off" ? null : TokenStore.Create(dataDir, "cluster-admin", Role.Admin, DateTimeOffset.UtcNow).Secret;
        var app = CoordinatorHost.Build(options, Quiet, services);
        await app.StartAsync();
        var cluster = new InProcessCluster(app, options, CoordinatorHost.Address(app), dataDir, adminToken, pki);
        for (var i = 0; i < workers; i++) await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        return cluster;
    }

    /// <summary>
    /// Stops the coordinator and starts a new one on the same data directory and port (its job store, uploads and tokens
    /// are what it finds on disk); <paramref name="services"/> replaces services of the new one (e.g. a clock further on);
    /// <paramref name="whileStopped"/> runs between the two (e.g. to change the data directory as an older version left it).
    /// </summary>
    public async Task RestartCoordinatorAsync(Action<IServiceCollection>? services = null, Action? whileStopped = null)
    {
        var port = new Uri(Address).Port;
        await coordinator.StopAsync();
        await coordinator.DisposeAsync();
        whileStopped?.Invoke();
        coordinator = CoordinatorHost.Build(options with { Port = port }, Quiet, services);
        await coordinator.StartAsync();
    }

    /// <param name="configure">Changes the worker's server before it is built (e.g. a gRPC interceptor standing in for a fault).</param>
    public async Task AddWorkerAsync(WorkerOptions? options = null, Action<WebApplicationBuilder>? configure = null)
    {
        options = (options ?? new WorkerOptions()) with { Coordinator = Address, Port = 0, Threads = "1", Name = $"test-{workers.Count + 1}" };
        if (Pki is not null && !options.Tls.HasMaterial) options = options with { Tls = new TlsSettings { Dir = Pki.WorkerDir } };
        var w = WorkerHost.Build(options, Quiet, configure);
        await w.StartAsync();
        workers.Add(w);
    }

    /// <summary>A service of the coordinator (e.g. its <see cref="WorkerRegistry"/>).</summary>
    public T CoordinatorService<T>() where T : notnull => coordinator.Services.GetRequiredService<T>();

    /// <summary>A service of worker <paramref name="index"/> (e.g. its <see cref="WorkerSecurity"/>).</summary>
    public T WorkerService<T>(int index) where T : notnull => workers[index].Services.GetRequiredService<T>();

    public async Task StopWorkerAsync(int index) => await workers[index].StopAsync();

    public async Task WaitForIdleAsync(int count, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (Client.ListWorkers(new ListWorkersRequest()).Workers.Count(w => w.State == WorkerState.Idle) < count)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"{count} idle workers not reached within {timeout}");
            await Task.Delay(50);
        }
    }

    /// <summary>Follows a job until it ends and returns its final info; bounded by <paramref name="timeout"/>.</summary>
    public async Task<JobInfo> WaitAsync(string jobId, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        using var call = Client.Watch(new WatchJobRequest { JobId = jobId }, cancellationToken: cts.Token);
        while (await call.ResponseStream.MoveNext(cts.Token)) { }
        return Client.Get(new GetJobRequest { JobId = jobId });
    }

    /// <summary>The file of the checkpoint <paramref name="info"/> names (clients see its name only) in this coordinator's data directory.</summary>
    public string CheckpointFile(JobInfo info) => CheckpointFile(DataDir, info);

    /// <summary>The file of the checkpoint <paramref name="info"/> names in the coordinator data directory <paramref name="dataDir"/>.</summary>
    public static string CheckpointFile(string dataDir, JobInfo info) => Path.Combine(dataDir, "jobs", info.JobId, "checkpoints", info.Checkpoint);

    /// <summary>A Jobs client on this cluster's channel that sends <paramref name="token"/> (none when null).</summary>
    public Jobs.JobsClient ClientFor(string? token) => token is null
        ? new Jobs.JobsClient(channel)
        : new Jobs.JobsClient(channel.Intercept(m => { m.Add("authorization", "Bearer " + token); return m; }));

    static void Quiet(ILoggingBuilder logging) => logging.SetMinimumLevel(LogLevel.Warning);

    public async ValueTask DisposeAsync()
    {
        foreach (var w in workers)
        {
            try { await w.StopAsync(); } catch (OperationCanceledException) { }
            await w.DisposeAsync();
        }
        await coordinator.StopAsync();
        await coordinator.DisposeAsync();
        channel.Dispose();
        try { Directory.Delete(DataDir, recursive: true); } catch (IOException) { }
    }
}
