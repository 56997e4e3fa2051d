using System.Net;
using Dtrain.Collective;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Collective;

/// <summary>An in-process host of the collective service on 127.0.0.1 (any free port), as a worker hosts it: the ring tests of every transport start theirs here.</summary>
internal static class CollectiveTestHost
{
    public static async Task<WebApplication> StartAsync(int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.AddDtrainCollective(new IPEndPoint(IPAddress.Loopback, 0), maxPieceFloats);
        var app = builder.Build();
        app.MapDtrainCollective();
        await app.StartAsync();
        return app;
    }

    /// <summary>A started host with its address.</summary>
    public static async Task<CollectiveHost> StartHostAsync(int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        var app = await StartAsync(maxPieceFloats);
        return new CollectiveHost(app, app.Urls.Single());
    }
}

/// <summary>One started host: its app and address, and the worker services the ring transports join through.</summary>
internal sealed record CollectiveHost(WebApplication App, string Address)
{
    public DataPlane Plane => App.Services.GetRequiredService<DataPlane>();

    public RingMailboxes Mailboxes => App.Services.GetRequiredService<RingMailboxes>();
}

/// <summary>W in-process hosts on 127.0.0.1, each joined to one ring by <c>connect</c> (the transport under test).</summary>
internal sealed class CollectiveTestRing<TTransport> : IAsyncDisposable where TTransport : IRingTransport
{
    private readonly CollectiveHost?[] hosts;

    private CollectiveTestRing(CollectiveHost[] hosts, TTransport[] transports)
    {
        this.hosts = hosts;
        Transports = transports;
        Addresses = hosts.Select(h => h.Address).ToArray();
    }

    public IReadOnlyList<TTransport> Transports { get; }

    public IReadOnlyList<string> Addresses { get; }

    /// <param name="connect">Joins (host, job id, rank, every rank's address) to the ring.</param>
    public static async Task<CollectiveTestRing<TTransport>> StartAsync(int world, Func<CollectiveHost, string, int, string[], Task<TTransport>> connect,
        int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
    {
        var hosts = await Task.WhenAll(Enumerable.Range(0, world).Select(_ => CollectiveTestHost.StartHostAsync(maxPieceFloats)));
        var addresses = hosts.Select(h => h.Address).ToArray();
        var jobId = $"test-{Guid.NewGuid():N}";
        var transports = await Task.WhenAll(Enumerable.Range(0, world).Select(rank => connect(hosts[rank], jobId, rank, addresses)));
        return new CollectiveTestRing<TTransport>(hosts, transports);
    }

    /// <summary>Like a crash: the server aborts its connections, the worker's own links go away.</summary>
    public async Task KillAsync(int rank)
    {
        var host = this.hosts[rank]!;
        this.hosts[rank] = null;
        try
        {
            await host.App.StopAsync(new CancellationToken(canceled: true));
        }
        catch (OperationCanceledException)
        {
        }
        await Transports[rank].DisposeAsync();
        await host.App.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var transport in Transports) await transport.DisposeAsync();
        foreach (var host in this.hosts)
            if (host is not null) await host.App.DisposeAsync();
    }
}
