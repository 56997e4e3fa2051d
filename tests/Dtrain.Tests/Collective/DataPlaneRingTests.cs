using Dtrain.Collective;
using Dtrain.Protos.Collective;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.DependencyInjection;
using CollectiveGrpc = Dtrain.Protos.Collective.Collective;

namespace Dtrain.Tests.Collective;

/// <summary>
/// The ring over each data-plane transport (shared memory, TCP, gRPC) between real Kestrel hosts on loopback (one per
/// rank, in this process), negotiated through their gRPC endpoints exactly as workers do.
/// </summary>
public class DataPlaneRingTests
{
    public static TheoryData<string> Transports => ["shm", "tcp", "grpc"];

    private static DataTransport Parse(string name) => DataTransports.TryParse(name, out var t) ? t : throw new ArgumentException(name);

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Sums_match_the_serial_sum_and_are_bit_identical_on_every_rank(string transport)
    {
        foreach (var world in new[] { 2, 3 })
        {
            await using var ring = await StartRingAsync(world, Parse(transport), maxPieceFloats: 4096);
            AssertLinks(ring, transport);
            const int length = 100_003;
            for (var op = 0; op < 2; op++)
            {
                var buffers = RingAllReduceTests.RandomBuffers(world, length, seed: (world * 10) + op);
                var expected = RingAllReduceTests.SerialSumInDouble(buffers, length);
                await Task.WhenAll(ring.Transports.Select((t, rank) => new RingAllReduce(t, 4096, TimeSpan.FromSeconds(60)).SumAsync(buffers[rank], op)));
                for (var i = 0; i < length; i++)
                    if (Math.Abs(buffers[0][i] - expected[i]) > 1e-5 * world) Assert.Fail($"{transport} world {world} op {op} element {i}: {buffers[0][i]} vs {expected[i]}");
                for (var rank = 1; rank < world; rank++) RingAllReduceTests.AssertBitIdentical(buffers[0], buffers[rank]);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Many_concurrent_operations_each_get_their_own_sum(string transport)
    {
        const int world = 3, ops = 12, length = 20_000;
        await using var ring = await StartRingAsync(world, Parse(transport), maxPieceFloats: 1024);
        var buffers = Enumerable.Range(0, ops).Select(op => RingAllReduceTests.RandomBuffers(world, length, seed: 100 + op)).ToArray();
        var expected = buffers.Select(b => RingAllReduceTests.SerialSumInDouble(b, length)).ToArray();
        var reducers = ring.Transports.Select(t => new RingAllReduce(t, 1024, TimeSpan.FromSeconds(60))).ToArray();
        await Task.WhenAll(Enumerable.Range(0, ops).SelectMany(op => Enumerable.Range(0, world).Select(rank => reducers[rank].SumAsync(buffers[op][rank], op))));
        for (var op = 0; op < ops; op++)
        {
            for (var i = 0; i < length; i++)
                if (Math.Abs(buffers[op][0][i] - expected[op][i]) > 1e-5 * world) Assert.Fail($"{transport} op {op} element {i}: {buffers[op][0][i]} vs {expected[op][i]}");
            for (var rank = 1; rank < world; rank++) RingAllReduceTests.AssertBitIdentical(buffers[op][0], buffers[op][rank]);
        }
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task A_peer_that_dies_fails_its_neighbours_with_a_transport_error_naming_it(string transport)
    {
        const int world = 3, dead = 1;
        await using var ring = await StartRingAsync(world, Parse(transport));
        var survivors = new[] { 0, 2 }.Select(rank => (rank, task: new RingAllReduce(ring.Transports[rank], operationTimeout: TimeSpan.FromSeconds(60)).SumAsync(new float[1 << 20], 5))).ToList();
        await Task.Delay(300);
        await ring.KillAsync(dead);
        foreach (var (rank, task) in survivors)
        {
            var ex = await Assert.ThrowsAsync<CollectiveException>(() => task.WaitAsync(TimeSpan.FromSeconds(30)));
            Assert.IsNotType<CollectiveTimeoutException>(ex);
            Assert.IsType<RingTransportException>(ex.InnerException, exactMatch: false);
            Assert.Equal(dead, ex.PeerRank);
            Assert.Contains($"rank {dead} ({ring.Addresses[dead]})", ex.Message, StringComparison.Ordinal);
        }
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Ranks_with_different_buffer_lengths_fail_naming_the_layout(string transport)
    {
        await using var ring = await StartRingAsync(2, Parse(transport), maxPieceFloats: 1024);
        var a = new RingAllReduce(ring.Transports[0], 1024, TimeSpan.FromSeconds(10)).SumAsync(new float[5000], 1);
        var b = new RingAllReduce(ring.Transports[1], 1024, TimeSpan.FromSeconds(10)).SumAsync(new float[5004], 1);
        var errors = new[] { await Assert.ThrowsAnyAsync<CollectiveException>(() => a), await Assert.ThrowsAnyAsync<CollectiveException>(() => b) };
        Assert.Contains(errors, e => e.Message.Contains("do all ranks use the same buffer length", StringComparison.Ordinal) && e is not CollectiveTimeoutException);
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task An_operation_that_gave_up_is_not_written_into_when_its_pieces_come_late(string transport)
    {
        await using var ring = await StartRingAsync(2, Parse(transport), maxPieceFloats: 1024);
        var mine = Enumerable.Repeat(1f, 8192).ToArray();
        // Rank 1 comes too late: rank 0's operation times out and returns.
        await Assert.ThrowsAsync<CollectiveTimeoutException>(() => new RingAllReduce(ring.Transports[0], 1024, TimeSpan.FromSeconds(1)).SumAsync(mine, 3));
        var after = (float[])mine.Clone();
        // Now rank 1 sends all it would: its pieces reach rank 0, and must stay out of the buffer rank 0 let go of.
        var late = new RingAllReduce(ring.Transports[1], 1024, TimeSpan.FromSeconds(2)).SumAsync(Enumerable.Repeat(5f, 8192).ToArray(), 3);
        await Assert.ThrowsAnyAsync<CollectiveException>(() => late);
        await Task.Delay(200);
        Assert.Equal(after, mine);
        // And the ring still works: the next operation of both sums.
        var x = Enumerable.Repeat(2f, 8192).ToArray();
        var y = Enumerable.Repeat(3f, 8192).ToArray();
        await Task.WhenAll(new RingAllReduce(ring.Transports[0], 1024, TimeSpan.FromSeconds(30)).SumAsync(x, 4), new RingAllReduce(ring.Transports[1], 1024, TimeSpan.FromSeconds(30)).SumAsync(y, 4));
        Assert.All(x, v => Assert.Equal(5f, v));
        Assert.All(y, v => Assert.Equal(5f, v));
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task A_sender_of_another_generation_is_refused(string transport)
    {
        var hosts = await Task.WhenAll(CollectiveTestHost.StartHostAsync(), CollectiveTestHost.StartHostAsync());
        try
        {
            string[] addresses = [hosts[0].Address, hosts[1].Address];
            // Rank 1 is in generation 2; rank 0 still thinks it is generation 1.
            var current = hosts[1].Plane.ConnectRingAsync("job", 2, 1, 2, addresses, Parse(transport), TimeSpan.FromSeconds(30));
            await Task.Delay(200);
            var ex = await Assert.ThrowsAsync<RingTransportException>(() =>
                hosts[0].Plane.ConnectRingAsync("job", 1, 0, 2, addresses, Parse(transport), TimeSpan.FromSeconds(2)));
            Assert.Contains("job/1", ex.Message, StringComparison.Ordinal);
            Assert.Contains("superseded", ex.Message, StringComparison.Ordinal);
            _ = current.ContinueWith(t => t.Exception, TaskScheduler.Default);
        }
        finally
        {
            foreach (var h in hosts) await h.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_tcp_connection_without_the_token_from_Hello_is_refused()
    {
        var hosts = await Task.WhenAll(CollectiveTestHost.StartHostAsync(), CollectiveTestHost.StartHostAsync());
        try
        {
            string[] addresses = [hosts[0].Address, hosts[1].Address];
            var joining = hosts[1].Plane.ConnectRingAsync("job", 1, 1, 2, addresses, DataTransport.Tcp, TimeSpan.FromSeconds(30));
            await Task.Delay(200);
            // A stranger asks for the ring's port (Hello is answered only to the left neighbour's rank), then presents a guessed token.
            var port = hosts[1].Plane.TcpPort;
            var stranger = await Assert.ThrowsAsync<InvalidOperationException>(() =>
                TcpLink.ConnectAsync("127.0.0.1", port, "job", 1, 0, 2, new byte[32], null, null, CancellationToken.None));
            Assert.Contains("did not present the token", stranger.Message, StringComparison.Ordinal);
            // The same with a real token of another generation's Hello.
            using var channel = GrpcChannel.ForAddress(addresses[1]);
            var wrongGeneration = await Assert.ThrowsAsync<RpcException>(() => new CollectiveGrpc.CollectiveClient(channel).HelloAsync(new DataPlaneHello { JobId = "job", Generation = 0, SenderRank = 0, WorldSize = 2 }).ResponseAsync);
            Assert.Equal(StatusCode.FailedPrecondition, wrongGeneration.StatusCode);
            // The real neighbour still gets in (the refusals attached nothing).
            await using var rank0 = await hosts[0].Plane.ConnectRingAsync("job", 1, 0, 2, addresses, DataTransport.Tcp, TimeSpan.FromSeconds(30));
            await using var rank1 = await joining;
            var a = new float[] { 1, 2, 3 };
            var b = new float[] { 10, 20, 30 };
            await Task.WhenAll(new RingAllReduce(rank0).SumAsync(a, 0), new RingAllReduce(rank1).SumAsync(b, 0));
            Assert.Equal([11f, 22, 33], a);
            Assert.Equal(a, b);
        }
        finally
        {
            foreach (var h in hosts) await h.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_shared_memory_file_without_the_token_is_refused_and_removed_files_do_not_linger()
    {
        var hosts = await Task.WhenAll(CollectiveTestHost.StartHostAsync(), CollectiveTestHost.StartHostAsync());
        try
        {
            string[] addresses = [hosts[0].Address, hosts[1].Address];
            var joining = hosts[1].Plane.ConnectRingAsync("job", 1, 1, 2, addresses, DataTransport.Shm, TimeSpan.FromSeconds(30));
            await Task.Delay(200);
            using var channel = GrpcChannel.ForAddress(addresses[1]);
            var client = new CollectiveGrpc.CollectiveClient(channel);
            await client.HelloAsync(new DataPlaneHello { JobId = "job", Generation = 1, SenderRank = 0, WorldSize = 2 });
            var path = Path.Combine(SharedMemoryRing.Directory, $"dtrain-test-{Guid.NewGuid():N}.ring");
            using (SharedMemoryRing.Create(path, 1 << 16, "job", 1, 0, new byte[32]))
            {
                var refused = await Assert.ThrowsAsync<RpcException>(() => client.AttachSharedMemoryAsync(new SharedMemoryAttach { JobId = "job", Generation = 1, SenderRank = 0, Path = path }).ResponseAsync);
                Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
                Assert.Contains("does not carry the token", refused.Status.Detail, StringComparison.Ordinal);
            }
            SharedMemoryRing.TryDelete(path);
            await using var rank0 = await hosts[0].Plane.ConnectRingAsync("job", 1, 0, 2, addresses, DataTransport.Shm, TimeSpan.FromSeconds(30));
            await using var rank1 = await joining;
            Assert.Equal("shared memory", ((PeerRingTransport)rank0).Peers.LinkTo(1));
            // Both ring files were deleted once mapped: nothing of this process is left in /dev/shm.
            Assert.Empty(Directory.GetFiles(SharedMemoryRing.Directory, $"dtrain-{Environment.ProcessId}-*"));
        }
        finally
        {
            foreach (var h in hosts) await h.App.DisposeAsync();
        }
    }

    [Fact]
    public async Task Auto_picks_shared_memory_for_a_peer_on_this_host()
    {
        await using var ring = await StartRingAsync(2, DataTransport.Auto);
        AssertLinks(ring, "shm");
    }

    /// <summary>W in-process hosts on 127.0.0.1, each joined to one ring with the given transport.</summary>
    internal static Task<CollectiveTestRing<IRingTransport>> StartRingAsync(int world, DataTransport transport, int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats) =>
        CollectiveTestRing<IRingTransport>.StartAsync(world,
            (host, jobId, rank, addresses) => host.Plane.ConnectRingAsync(jobId, 1, rank, world, addresses, transport, TimeSpan.FromSeconds(30)), maxPieceFloats);

    /// <summary>Every rank's link to its right neighbour is of this kind.</summary>
    private static void AssertLinks(CollectiveTestRing<IRingTransport> ring, string transport)
    {
        foreach (var t in ring.Transports)
        {
            if (transport == "grpc") Assert.IsType<GrpcRingTransport>(t);
            else Assert.Equal(transport == "shm" ? "shared memory" : "tcp", Assert.IsType<PeerRingTransport>(t).Peers.LinkTo((t.Rank + 1) % t.WorldSize));
        }
    }
}
