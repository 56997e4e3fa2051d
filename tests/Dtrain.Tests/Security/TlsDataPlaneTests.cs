using Dtrain.Collective;
using Dtrain.Protos.Collective;
using Dtrain.Rpc;
using Dtrain.Tests.Collective;
using Grpc.Core;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Tests.Security;

/// <summary>
/// The TCP data plane of a cluster with TLS, between real TLS servers on loopback: the ring's TCP links run inside TLS
/// with the workers' certificates; a stranger — no TLS, another worker's certificate, or no token from Hello — is refused.
/// </summary>
public class TlsDataPlaneTests
{
    [Fact]
    public async Task A_tcp_ring_runs_inside_TLS_and_strangers_are_refused()
    {
        using var pki = new TestPki();
        var members = new[] { new TlsWorker(pki, "w0"), new TlsWorker(pki, "w1"), new TlsWorker(pki, "w2") };
        try
        {
            foreach (var m in members.Take(2))
                m.App = await TlsHosts.StartAsync(new ServerSecurity(m.Own(), AccessPolicy.Worker()), b => b.Services.AddDtrainCollective(), a => a.MapDtrainCollective());
            string[] addresses = [members[0].Address, members[1].Address];
            var ranks = members.Take(2).Select(m => m.Expected).ToList();
            Task<IRingTransport> Join(int rank) => members[rank].Plane.ConnectRingAsync("job", 1, rank, 2, addresses, DataTransport.Tcp, TimeSpan.FromSeconds(60), new RingSecurity(members[rank].Own(), ranks));

            var rank1 = Join(1);
            await Task.Delay(300);
            var port = members[1].Plane.TcpPort;
            // No TLS at all: the handshake fails.
            await Assert.ThrowsAnyAsync<Exception>(() => TcpLink.ConnectAsync("127.0.0.1", port, "job", 1, 0, 2, new byte[32], null, null, CancellationToken.None));
            // Another worker of the cluster (w2) claiming rank 0: Hello refuses its certificate, so it has no token ...
            using (var channel = pki.Channel(addresses[1], members[2].Certificate, members[1].Expected))
            {
                var hello = await Assert.ThrowsAsync<RpcException>(() => new CollectiveGrpc.CollectiveClient(channel).HelloAsync(new DataPlaneHello { JobId = "job", Generation = 1, SenderRank = 0, WorldSize = 2 }).ResponseAsync);
                Assert.Equal(StatusCode.PermissionDenied, hello.StatusCode);
            }
            // ... and its TLS connection with a guessed token is refused for its certificate.
            var stranger = await Assert.ThrowsAsync<InvalidOperationException>(() =>
                TcpLink.ConnectAsync("127.0.0.1", port, "job", 1, 0, 2, new byte[32], members[2].Own(), members[1].Expected, CancellationToken.None));
            Assert.Contains("worker \"w2\"", stranger.Message, StringComparison.Ordinal);

            // The real neighbours then form the ring over TLS, and it sums exactly.
            await using var t0 = await Join(0);
            await using var t1 = await rank1;
            Assert.Equal("tcp+tls", ((PeerRingTransport)t0).Peers.LinkTo(1));
            Assert.Equal("tcp+tls", ((PeerRingTransport)t1).Peers.LinkTo(0));
            var buffers = RingAllReduceTests.RandomBuffers(2, 300_000, seed: 5);
            var expected = RingAllReduceTests.SerialSumInDouble(buffers, 300_000);
            await Task.WhenAll(new RingAllReduce(t0).SumAsync(buffers[0], 0), new RingAllReduce(t1).SumAsync(buffers[1], 0));
            for (var i = 0; i < 300_000; i++) Assert.True(Math.Abs(buffers[0][i] - expected[i]) <= 1e-4, $"element {i}: {buffers[0][i]} vs {expected[i]}");
            RingAllReduceTests.AssertBitIdentical(buffers[0], buffers[1]);
        }
        finally
        {
            foreach (var m in members)
            {
                if (m.App is not null) await m.App.DisposeAsync();
                m.Dispose();
            }
        }
    }
}
