using System.Net;
using Dtrain.Collective;
using Dtrain.Cluster;
using Dtrain.Worker;

namespace Dtrain.Tests.Cluster;

/// <summary>The worker's ring connector (what WorkerHost wires): its option, and how it gives up.</summary>
public class DataPlaneConnectorTests
{
    [Theory]
    [InlineData("tcp")]
    [InlineData("grpc")]
    public async Task Joining_a_ring_gives_up_after_Worker_RingConnectTimeoutSeconds_and_says_so(string transport)
    {
        using var closed = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        closed.Start();
        var port = ((IPEndPoint)closed.LocalEndpoint).Port;
        closed.Stop();
        var options = new WorkerOptions { RingConnectTimeoutSeconds = 1, Transport = transport };
        await using var plane = new DataPlane(new RingMailboxes());
        var connector = new DataPlaneRingConnector(plane, options, WorkerSecurity.Create(options));
        var request = new RingMembership("job-0001", 1, 0, 2, [new ClusterPeer(0, "w1", "http://127.0.0.1:1"), new ClusterPeer(1, "w2", $"http://127.0.0.1:{port}")], 0);
        using var guard = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var e = await Assert.ThrowsAsync<RingTransportException>(() => connector.ConnectAsync(request, guard.Token));
        Assert.Contains($"cannot open the ring stream of job-0001/1 to its right neighbour rank 1 (http://127.0.0.1:{port})", e.Message);
        Assert.EndsWith("(gave up after Worker:RingConnectTimeoutSeconds = 1 s)", e.Message);
    }

    [Theory]
    [InlineData("auto", true)]
    [InlineData("SHM", true)]
    [InlineData("tcp", true)]
    [InlineData("grpc", true)]
    [InlineData("udp", false)]
    public void Worker_Transport_accepts_auto_shm_tcp_grpc(string value, bool valid)
    {
        var errors = new WorkerOptions { Transport = value }.Validate();
        if (valid) Assert.Empty(errors);
        else Assert.Contains("Worker:Transport \"udp\" must be auto, shm, tcp or grpc", errors);
    }
}
