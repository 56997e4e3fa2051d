using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Tests.Security;
using Dtrain.Worker;
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
    private readonly WebApplication coordinator;
    private readonly List<WebApplication> workers = [];
    private readonly GrpcChannel channel;

    public string Address { get; }
    public string DataDir { get; }
    public Jobs.JobsClient Client { get; }
    public TestPki? Pki { get; }

    private InProcessCluster(WebApplication coordinator, string address, string dataDir, TestPki? pki)
    {
        this.coordinator = coordinator;
        Address = address;
        DataDir = dataDir;
        Pki = pki;
        channel = Channels.Create(address, pki?.TlsOf(pki.ClientDir), ExpectedPeer.Coordinator,
            new GrpcChannelOptions { MaxReceiveMessageSize = 256 << 20, MaxSendMessageSize = 256 << 20 });
        Client = new Jobs.JobsClient(channel);
    }

    public static async Task<InProcessCluster> StartAsync(int workers, CoordinatorOptions? options = null, TestPki? pki = null)
    {
        var dataDir = Directory.CreateTempSubdirectory("dtrain-cluster-").FullName;
        options = (options ?? new CoordinatorOptions()) with { Port = 0, DataDir = dataDir };
        if (pki is not null) options = options with { Tls = new TlsSettings { Dir = pki.CoordinatorDir } };
        var app = CoordinatorHost.Build(options, Quiet);
        await app.StartAsync();
        var cluster = new InProcessCluster(app, CoordinatorHost.Address(app), dataDir, pki);
        for (var i = 0; i < workers; i++) await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        return cluster;
    }

    public async Task AddWorkerAsync(WorkerOptions? options = null)
    {
        options = (options ?? new WorkerOptions()) with { Coordinator = Address, Port = 0, Threads = "1", Name = $"test-{workers.Count + 1}" };
        if (Pki is not null && !options.Tls.HasMaterial) options = options with { Tls = new TlsSettings { Dir = Pki.WorkerDir } };
        var w = WorkerHost.Build(options, Quiet);
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
