using Dtrain.Collective;
using Dtrain.Protos.Collective;
using Grpc.Core;
using Grpc.Net.Client;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Tests.Collective;

/// <summary>Real Kestrel servers on loopback, one per rank, in this process.</summary>
public class GrpcRingTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Sum_over_grpc_matches_serial_sum_for_2_3_and_4_workers(int world)
    {
        const int length = 1 << 20;
        await using var cluster = await StartClusterAsync(world);
        for (var op = 0; op < 2; op++)
        {
            var buffers = RingAllReduceTests.RandomBuffers(world, length, seed: (world * 10) + op);
            var expected = RingAllReduceTests.SerialSumInDouble(buffers, length);
            await Task.WhenAll(cluster.Transports.Select((t, rank) => new RingAllReduce(t, operationTimeout: TimeSpan.FromSeconds(60)).SumAsync(buffers[rank], op)));
            for (var i = 0; i < length; i++)
                if (Math.Abs(buffers[0][i] - expected[i]) > 1e-5 * world) Assert.Fail($"op {op} element {i}: {buffers[0][i]} vs {expected[i]}");
            for (var rank = 1; rank < world; rank++) RingAllReduceTests.AssertBitIdentical(buffers[0], buffers[rank]);
        }
    }

    [Fact]
    public async Task A_dead_worker_makes_both_neighbours_fail_naming_it_within_seconds()
    {
        const int world = 3, dead = 1;
        await using var cluster = await StartClusterAsync(world);
        var deadAddress = cluster.Addresses[dead];
        // Ranks 0 and 2 are mid-operation (their first pieces are out); rank 1 dies before contributing.
        var survivors = new[] { 0, 2 }.Select(rank => (rank, task: new RingAllReduce(cluster.Transports[rank], operationTimeout: TimeSpan.FromSeconds(60)).SumAsync(new float[1 << 20], 5))).ToList();
        await Task.Delay(300);
        await cluster.KillAsync(dead);
        foreach (var (rank, task) in survivors)
        {
            var ex = await Assert.ThrowsAsync<CollectiveException>(() => task.WaitAsync(TimeSpan.FromSeconds(20)));
            Assert.IsNotType<CollectiveTimeoutException>(ex);
            Assert.Equal(dead, ex.PeerRank);
            Assert.Contains($"rank {dead} ({deadAddress})", ex.Message, StringComparison.Ordinal);
            Assert.Contains("operation 5", ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_stream_for_an_unknown_ring_is_refused_with_FailedPrecondition()
    {
        var host = await CollectiveTestHost.StartHostAsync();
        try
        {
            var ex = await PushAsync(host.Address, "no-such-job", 3);
            Assert.Equal(StatusCode.FailedPrecondition, ex.StatusCode);
            Assert.Contains("no-such-job/3", ex.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            await host.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_stream_for_an_older_generation_is_refused_with_FailedPrecondition()
    {
        var host = await CollectiveTestHost.StartHostAsync();
        try
        {
            // A ring of one registers its mailbox without any neighbour.
            await using var current = await GrpcRingTransport.ConnectAsync("job", 4, 0, 1, [host.Address], host.Mailboxes);
            var ex = await PushAsync(host.Address, "job", 3);
            Assert.Equal(StatusCode.FailedPrecondition, ex.StatusCode);
            Assert.Contains("superseded by generation 4", ex.Status.Detail, StringComparison.Ordinal);
        }
        finally
        {
            await host.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task Connecting_to_a_neighbour_that_never_registers_the_ring_fails_after_the_connect_timeout()
    {
        var host = await CollectiveTestHost.StartHostAsync();
        var local = await CollectiveTestHost.StartHostAsync();
        try
        {
            var ex = await Assert.ThrowsAsync<RingTransportException>(() =>
                GrpcRingTransport.ConnectAsync("job", 0, 0, 2, [local.Address, host.Address], local.Mailboxes, TimeSpan.FromSeconds(1)));
            Assert.Equal(1, ex.PeerRank);
            Assert.Contains("FailedPrecondition", ex.Message, StringComparison.Ordinal);
            Assert.Contains(host.Address, ex.Message, StringComparison.Ordinal);
        }
        finally
        {
            await host.App.DisposeAsync();
            await local.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task An_oversized_piece_is_rejected_with_InvalidArgument_and_breaks_the_senders_stream()
    {
        await using var cluster = await StartClusterAsync(2, maxPieceFloats: 16);
        var sender = cluster.Transports[0];
        using var big = RingPiece.CopyOf(new RingTag(0, 0, 0, 0), 0, 1, new byte[17 * sizeof(float)]);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var ex = await Assert.ThrowsAsync<RingTransportException>(async () =>
        {
            await sender.SendAsync(big, timeout.Token);
            // The refusal arrives asynchronously; from then on the transport is broken.
            while (true)
            {
                await Task.Delay(20, timeout.Token);
                await sender.SendAsync(RingPiece.CopyOf(new RingTag(1, 0, 0, 0), 0, 1, new byte[4]), timeout.Token);
            }
        });
        Assert.Equal(1, ex.PeerRank);
        Assert.Contains("InvalidArgument", ex.Message, StringComparison.Ordinal);
        Assert.Contains("at most 64 bytes", ex.Message, StringComparison.Ordinal);
    }

    private static async Task<RpcException> PushAsync(string address, string jobId, long generation)
    {
        using var channel = GrpcChannel.ForAddress(address);
        var client = new CollectiveGrpc.CollectiveClient(channel);
        using var call = client.Push(new Metadata { { "dtrain-job", jobId }, { "dtrain-generation", $"{generation}" }, { "dtrain-sender", "0" }, { "dtrain-world", "2" } });
        try
        {
            await call.RequestStream.WriteAsync(new RingChunk { JobId = jobId, Generation = generation, Pieces = 1 });
            await call.RequestStream.CompleteAsync();
        }
        catch (Exception ex) when (ex is RpcException or InvalidOperationException or IOException)
        {
            // refused before the write: the status comes with the response
        }
        return await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
    }

    /// <summary>W in-process worker hosts on 127.0.0.1, port 0, each with a gRPC transport in one ring.</summary>
    private static Task<CollectiveTestRing<GrpcRingTransport>> StartClusterAsync(int world, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats) =>
        CollectiveTestRing<GrpcRingTransport>.StartAsync(world,
            (host, jobId, rank, addresses) => GrpcRingTransport.ConnectAsync(jobId, 1, rank, world, addresses, host.Mailboxes, TimeSpan.FromSeconds(30)), maxPieceFloats);
}
