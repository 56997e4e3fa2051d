using System.Security.Cryptography.X509Certificates;
using Dtrain.Collective;
using Dtrain.Distributed.Pipeline;
using Dtrain.Protos.Collective;
using Dtrain.Protos.Pipeline;
using Dtrain.Rpc;
using Dtrain.Tests.Collective;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using static TorchSharp.torch;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Tests.Security;

/// <summary>
/// Worker-to-worker traffic over mutual TLS between real servers on loopback, built like a worker's (GrpcServerHost
/// with TLS and the access interceptor): a ring stream or a pipeline link is accepted only from the neighbour whose
/// certificate the receiver was told to expect — not from whoever claims the neighbour's rank or stage in a header
/// or frame — and the real neighbours then work as before.
/// </summary>
public class TlsPeerLinkTests
{
    sealed class Member(TestPki pki, string name) : IDisposable
    {
        public X509Certificate2 Certificate { get; } = pki.Issue(name, ClusterRoles.Worker);
        public ClusterTls Tls { get; } = pki.Tls(null);
        public string Name { get; } = name;
        public ExpectedPeer Expected => ExpectedPeer.Worker(Name, ClusterCertificates.Sha256(Certificate));
        public WebApplication? App { get; set; }
        public string Address => GrpcServerHost.LocalAddress(App!);

        public ClusterTls Own()
        {
            Tls.Certificate = Certificate;
            return Tls;
        }

        public void Dispose() => Certificate.Dispose();
    }

    static async Task<Member> StartRingMemberAsync(TestPki pki, string name)
    {
        var m = new Member(pki, name);
        m.App = await TlsHosts.StartAsync(new ServerSecurity(m.Own(), AccessPolicy.Worker()), b => b.Services.AddDtrainCollective(), a => a.MapDtrainCollective());
        return m;
    }

    /// <summary>A Push stream to <paramref name="address"/> as <paramref name="certificate"/>, with headers claiming to be rank 0 of 3; its final status.</summary>
    static async Task<RpcException> PushAsClaimingRank0(TestPki pki, string address, X509Certificate2? certificate, ExpectedPeer server)
    {
        using var channel = pki.Channel(address, certificate, server);
        using var call = new CollectiveGrpc.CollectiveClient(channel).Push(new Metadata { { "dtrain-job", "job" }, { "dtrain-generation", "1" }, { "dtrain-sender", "0" }, { "dtrain-world", "3" } });
        try
        {
            await call.RequestStream.WriteAsync(new RingChunk { JobId = "job", Generation = 1, SenderRank = 0, Pieces = 1, Data = Google.Protobuf.ByteString.CopyFrom(new byte[16]) });
            await call.RequestStream.CompleteAsync();
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException or IOException)
        {
            // refused before the write completed: the status comes with the response
        }
        return await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
    }

    [Fact]
    public async Task A_ring_stream_is_accepted_only_from_the_left_neighbours_certificate()
    {
        using var pki = new TestPki();
        var members = new List<Member>();
        try
        {
            for (var r = 0; r < 3; r++) members.Add(await StartRingMemberAsync(pki, $"w{r}"));
            var addresses = members.Select(m => m.Address).ToList();
            var ranks = members.Select(m => m.Expected).ToList();
            Task<GrpcRingTransport> Join(int rank) => GrpcRingTransport.ConnectAsync("job", 1, rank, 3, addresses, members[rank].App!.Services.GetRequiredService<RingMailboxes>(),
                TimeSpan.FromSeconds(60), new RingSecurity(members[rank].Own(), ranks));

            // Rank 1 registers its ring (and waits for rank 2). Before its real left neighbour (w0) connects, others
            // claim to be rank 0: w2 (a member of the same ring, just not rank 1's left neighbour), a client
            // certificate, and a caller without any certificate.
            var rank1 = Join(1);   // registers rank 1's mailbox before it returns
            var target = members[1].Expected;
            var fromW2 = await PushAsClaimingRank0(pki, addresses[1], members[2].Certificate, target);
            Assert.True(fromW2.StatusCode == StatusCode.PermissionDenied, $"{fromW2.StatusCode}: {fromW2.Status.Detail}");
            Assert.Contains("worker \"w2\"", fromW2.Status.Detail);
            Assert.Contains("accepts only its left neighbour rank 0", fromW2.Status.Detail);
            using (var client = pki.Issue("mallory", ClusterRoles.Client))
                Assert.Equal(StatusCode.PermissionDenied, (await PushAsClaimingRank0(pki, addresses[1], client, target)).StatusCode);
            Assert.Equal(StatusCode.Unauthenticated, (await PushAsClaimingRank0(pki, addresses[1], null, target)).StatusCode);

            // The real neighbours then form the ring, and it sums exactly.
            var transports = await Task.WhenAll(Join(0), rank1, Join(2));
            try
            {
                var buffers = RingAllReduceTests.RandomBuffers(3, 4096, seed: 11);
                var expected = RingAllReduceTests.SerialSumInDouble(buffers, 4096);
                await Task.WhenAll(transports.Select((t, rank) => new RingAllReduce(t, operationTimeout: TimeSpan.FromSeconds(60)).SumAsync(buffers[rank], 0)));
                for (var i = 0; i < 4096; i++) Assert.True(Math.Abs(buffers[0][i] - expected[i]) <= 1e-4, $"element {i}: {buffers[0][i]} vs {expected[i]}");
                RingAllReduceTests.AssertBitIdentical(buffers[0], buffers[2]);
            }
            finally
            {
                foreach (var t in transports) await t.DisposeAsync();
            }
        }
        finally
        {
            foreach (var m in members)
            {
                await m.App!.DisposeAsync();
                m.Dispose();
            }
        }
    }

    [Fact]
    public async Task A_ring_member_does_not_send_to_a_right_neighbour_with_another_certificate()
    {
        using var pki = new TestPki();
        var left = await StartRingMemberAsync(pki, "w0");
        var right = await StartRingMemberAsync(pki, "w1");
        using var impostor = new Member(pki, "w1");   // same name, another certificate than the one right serves with
        try
        {
            var e = await Assert.ThrowsAsync<RingTransportException>(() => GrpcRingTransport.ConnectAsync("job", 1, 0, 2, [left.Address, right.Address],
                left.App!.Services.GetRequiredService<RingMailboxes>(), TimeSpan.FromSeconds(30), new RingSecurity(left.Own(), [left.Expected, impostor.Expected])));
            Assert.Contains("is not the one expected", e.Message);
        }
        finally
        {
            await left.App!.DisposeAsync();
            await right.App!.DisposeAsync();
            left.Dispose();
            right.Dispose();
        }
    }

    [Fact]
    public async Task A_pipeline_link_is_accepted_only_from_the_neighbouring_stages_certificate()
    {
        using var pki = new TestPki();
        using var stage0 = new Member(pki, "s0");
        using var stage1 = new Member(pki, "s1");
        using var outsider = new Member(pki, "s9");   // a worker of the cluster, but not stage 1's neighbour
        stage1.App = await TlsHosts.StartAsync(new ServerSecurity(stage1.Own(), AccessPolicy.Worker()),
            b => b.Services.AddSingleton<StageMailboxes>(), a => a.MapGrpcService<StageLinkService>());
        try
        {
            var mailboxes = stage1.App.Services.GetRequiredService<StageMailboxes>();
            // Stage 1 of replica 0 expects activations from s0 only.
            await using var receiving = new GrpcStageLinks("job", 1, 0, 1, "https://127.0.0.1:1", null, mailboxes, security: new StageLinkSecurity(stage1.Own(), stage0.Expected, null));

            foreach (var (who, certificate, code) in new[] { ("s9", outsider.Certificate, StatusCode.PermissionDenied), ("nobody", (X509Certificate2?)null, StatusCode.Unauthenticated) })
            {
                using var channel = pki.Channel(stage1.Address, certificate, stage1.Expected);
                using var call = new StageLink.StageLinkClient(channel).Send();
                var frame = new TensorFrame { JobId = "job", Generation = 1, Replica = 0, FromStage = 0, ToStage = 1, Kind = 0, Step = 0, MicroBatch = 0, TotalBytes = 8, Data = Google.Protobuf.ByteString.CopyFrom(new byte[8]) };
                frame.Shape.AddRange([2L]);
                try
                {
                    await call.RequestStream.WriteAsync(frame);
                    await call.RequestStream.CompleteAsync();
                }
                catch (Exception e) when (e is RpcException or InvalidOperationException or IOException)
                {
                    // refused before the write completed
                }
                var refused = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
                Assert.True(refused.StatusCode == code, $"{who}: {refused.StatusCode}: {refused.Status.Detail}");
            }

            // The real previous stage sends the same step and micro-batch: it arrives (had a forged one been delivered
            // first, this one would be refused as arriving twice and the values would differ).
            await using var sending = new GrpcStageLinks("job", 1, 0, 0, null, stage1.Address, new StageMailboxes(), security: new StageLinkSecurity(stage0.Own(), null, stage1.Expected));
            using var activation = arange(0, 6, dtype: float32).reshape(2, 3);
            await sending.ForStep(0).SendActivationAsync(0, activation, CancellationToken.None);
            var got = await mailboxes.ReceiveAsync("job", 1, 0, 1, StageTensorKind.Activation, 0, 0, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal([2L, 3], got.Shape);
            Assert.Equal([0f, 1, 2, 3, 4, 5], got.Values);
        }
        finally
        {
            await stage1.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_data_plane_stage_link_over_tcp_tls_is_accepted_only_from_the_neighbouring_stages_certificate()
    {
        using var pki = new TestPki();
        var stage0 = await StartRingMemberAsync(pki, "s0");
        var stage1 = await StartRingMemberAsync(pki, "s1");
        var outsider = await StartRingMemberAsync(pki, "s9");   // a worker of the cluster, but not stage 1's neighbour
        DataPlane Plane(Member m) => m.App!.Services.GetRequiredService<DataPlane>();
        try
        {
            // Stage 1 registers its links (expecting s0 as its previous stage) and waits for stage 0.
            var joining1 = Plane(stage1).ConnectStageLinksAsync("job", 1, 0, 1, 2, stage0.Address, null, DataTransport.Tcp, TimeSpan.FromSeconds(60),
                stage1.Own(), stage0.Expected, null);
            await Task.Delay(200);
            // s9 claims to be stage 0 (pinning stage 1's real certificate): its Hello is refused for its certificate.
            var refused = await Assert.ThrowsAsync<RingTransportException>(() => Plane(outsider).ConnectStageLinksAsync("job", 1, 0, 0, 2, null, stage1.Address,
                DataTransport.Tcp, TimeSpan.FromSeconds(5), outsider.Own(), null, stage1.Expected));
            Assert.Contains("PermissionDenied", refused.Message, StringComparison.Ordinal);
            Assert.Contains("worker \"s9\"", refused.Message, StringComparison.Ordinal);
            Assert.Contains("accepts only its sending stage rank 0", refused.Message, StringComparison.Ordinal);
            // Stage 0 does not send to a "stage 1" serving another certificate than the one it was told to expect.
            using (var impostor = new Member(pki, "s1"))
            {
                var wrong = await Assert.ThrowsAsync<RingTransportException>(() => Plane(stage0).ConnectStageLinksAsync("job-x", 1, 0, 0, 2, null, stage1.Address,
                    DataTransport.Tcp, TimeSpan.FromSeconds(5), stage0.Own(), null, impostor.Expected));
                Assert.Contains("is not the one expected", wrong.Message, StringComparison.Ordinal);
            }

            // The real stage 0 then links up over TCP inside TLS, and tensors cross both ways.
            await using var links0 = new PeerStageLinks(await Plane(stage0).ConnectStageLinksAsync("job", 1, 0, 0, 2, null, stage1.Address, DataTransport.Tcp,
                TimeSpan.FromSeconds(60), stage0.Own(), null, stage1.Expected), "job", 1 << 16);
            await using var links1 = new PeerStageLinks(await joining1, "job", 1 << 16);
            Assert.Equal("tcp+tls", links0.Peers.LinkTo(1));
            Assert.Equal("tcp+tls", links1.Peers.LinkTo(0));
            using var activation = arange(0, 6, dtype: float32).reshape(2, 3);
            await links0.ForStep(0).SendActivationAsync(0, activation, CancellationToken.None);
            using var got = await links1.ForStep(0).ReceiveActivationAsync(0, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal([2L, 3], got.shape);
            Assert.Equal([0f, 1, 2, 3, 4, 5], got.data<float>().ToArray());
            await links1.ForStep(0).SendGradientAsync(0, got * -1, CancellationToken.None);
            using var back = await links0.ForStep(0).ReceiveGradientAsync(0, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
            Assert.Equal([0f, -1, -2, -3, -4, -5], back.data<float>().ToArray());
        }
        finally
        {
            foreach (var m in new[] { stage0, stage1, outsider })
            {
                await m.App!.DisposeAsync();
                m.Dispose();
            }
        }
    }
}
