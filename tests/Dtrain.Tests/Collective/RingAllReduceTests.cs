using System.Runtime.InteropServices;
using Dtrain.Collective;

namespace Dtrain.Tests.Collective;

public class RingAllReduceTests
{
    public static TheoryData<int, int, int> WorldSizesLengthsAndPieceSizes()
    {
        var data = new TheoryData<int, int, int>();
        for (var world = 1; world <= 8; world++)
        {
            foreach (var length in new[] { 0, 1, world - 1, world + 1, 1000 }.Distinct())
            {
                data.Add(world, length, 7);
                data.Add(world, length, RingAllReduce.DefaultMaxPieceFloats);
            }
            data.Add(world, 262_145, 4099);
            data.Add(world, 262_145, RingAllReduce.DefaultMaxPieceFloats);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(WorldSizesLengthsAndPieceSizes))]
    public async Task Sum_matches_serial_sum_for_world_sizes_1_to_8(int world, int length, int maxPieceFloats)
    {
        // Small integers: every float sum is exact, so the result must equal the serial sum bit for bit.
        var buffers = Enumerable.Range(0, world).Select(rank => Enumerable.Range(0, length).Select(i => (float)(((rank * 31) + (i * 7)) % 17 - 8)).ToArray()).ToArray();
        var expected = SerialSum(buffers, length);
        await using var ring = new Ring(world);
        await ring.SumAsync(buffers, 1, maxPieceFloats);
        for (var rank = 0; rank < world; rank++) Assert.Equal(expected, buffers[rank]);
    }

    [Theory]
    [InlineData(2, 100_003, 1000)]
    [InlineData(3, 100_003, 7777)]
    [InlineData(5, 100_003, 1000)]
    [InlineData(8, 100_003, RingAllReduce.DefaultMaxPieceFloats)]
    public async Task Random_float_sum_is_close_to_serial_sum_and_bit_identical_on_every_rank(int world, int length, int maxPieceFloats)
    {
        var buffers = RandomBuffers(world, length, seed: world);
        var expected = SerialSumInDouble(buffers, length);
        await using var ring = new Ring(world);
        await ring.SumAsync(buffers, 7, maxPieceFloats);
        for (var i = 0; i < length; i++) Assert.True(Math.Abs(buffers[0][i] - expected[i]) <= 1e-5 * world, $"element {i}: {buffers[0][i]} vs {expected[i]}");
        for (var rank = 1; rank < world; rank++) AssertBitIdentical(buffers[0], buffers[rank]);
    }

    [Fact]
    public async Task Concurrent_operations_with_distinct_ids_do_not_mix()
    {
        const int world = 4, operations = 6, length = 5000;
        await using var ring = new Ring(world);
        var perOp = Enumerable.Range(0, operations).Select(op => Enumerable.Range(0, world).Select(rank => Enumerable.Repeat((float)((op * 10) + rank), length).ToArray()).ToArray()).ToArray();
        await Task.WhenAll(Enumerable.Range(0, operations).Select(op => ring.SumAsync(perOp[op], op, maxPieceFloats: 333)));
        for (var op = 0; op < operations; op++)
        {
            var expected = (op * 10 * world) + (world * (world - 1) / 2);
            foreach (var buffer in perOp[op]) Assert.All(buffer, v => Assert.Equal(expected, v));
        }
    }

    [Fact]
    public async Task Back_to_back_operations_reuse_the_same_transports()
    {
        const int world = 3, length = 10_001;
        await using var ring = new Ring(world);
        for (var op = 0; op < 20; op++)
        {
            var buffers = Enumerable.Range(0, world).Select(rank => Enumerable.Range(0, length).Select(i => (float)((i + op + rank) % 5)).ToArray()).ToArray();
            var expected = SerialSum(buffers, length);
            await ring.SumAsync(buffers, op, maxPieceFloats: 1024);
            foreach (var buffer in buffers) Assert.Equal(expected, buffer);
        }
    }

    [Fact]
    public async Task A_rank_that_never_arrives_makes_the_others_time_out_naming_operation_step_and_left_neighbour()
    {
        const int world = 4, absent = 2;
        var timeout = TimeSpan.FromMilliseconds(500);
        await using var ring = new Ring(world);
        var tasks = Enumerable.Range(0, world).Where(r => r != absent)
            .Select(rank => (rank, task: new RingAllReduce(ring.Transports[rank], 100, timeout).SumAsync(new float[1000], 42))).ToList();
        foreach (var (rank, task) in tasks)
        {
            var ex = await Assert.ThrowsAsync<CollectiveTimeoutException>(() => task);
            Assert.Equal(42, ex.Operation);
            Assert.Equal((rank + world - 1) % world, ex.PeerRank);
            Assert.Contains("operation 42", ex.Message, StringComparison.Ordinal);
            Assert.Contains("step", ex.Message, StringComparison.Ordinal);
            Assert.Contains($"waiting for left neighbour rank {(rank + world - 1) % world}", ex.Message, StringComparison.Ordinal);
        }
        // The right neighbour of the absent rank is stuck in the very first reduce-scatter step.
        var right = await Assert.ThrowsAsync<CollectiveTimeoutException>(() => tasks.Single(t => t.rank == absent + 1).task);
        Assert.Equal((0, 0), (right.Phase, right.RingStep));
        Assert.Equal(absent, right.PeerRank);
    }

    [Fact]
    public async Task Cancellation_surfaces_as_OperationCanceledException_naming_the_position()
    {
        const int world = 3;
        await using var ring = new Ring(world);
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var task = new RingAllReduce(ring.Transports[1], 64, TimeSpan.FromMinutes(5)).SumAsync(new float[300], 9, cts.Token);
        var ex = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => task);
        Assert.Contains("operation 9", ex.Message, StringComparison.Ordinal);
        Assert.Contains("reduce-scatter step 0", ex.Message, StringComparison.Ordinal);
        Assert.Contains("waiting for left neighbour rank 0", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_left_neighbour_that_leaves_fails_the_receiver_at_once()
    {
        const int world = 3;
        await using var ring = new Ring(world);
        var task = new RingAllReduce(ring.Transports[1], 64, TimeSpan.FromMinutes(5)).SumAsync(new float[300], 3);
        await Task.Delay(50);
        await ring.Transports[0].DisposeAsync();
        var ex = await Assert.ThrowsAsync<CollectiveException>(() => task);
        Assert.Equal(0, ex.PeerRank);
        Assert.Contains("left neighbour rank 0", ex.Message, StringComparison.Ordinal);
        // Failed because the neighbour left, not after the 5-minute operation timeout.
        Assert.IsNotType<CollectiveTimeoutException>(ex);
    }

    [Fact]
    public async Task Ranks_with_different_buffer_lengths_fail_with_a_message_saying_so()
    {
        const int world = 2;
        await using var ring = new Ring(world);
        var a = new RingAllReduce(ring.Transports[0], 4, TimeSpan.FromSeconds(2)).SumAsync(new float[10], 1);
        var b = new RingAllReduce(ring.Transports[1], 4, TimeSpan.FromSeconds(2)).SumAsync(new float[12], 1);
        var errors = new List<CollectiveException>
        {
            await Assert.ThrowsAnyAsync<CollectiveException>(() => a),
            await Assert.ThrowsAnyAsync<CollectiveException>(() => b),
        };
        Assert.Contains(errors, e => e.Message.Contains("same buffer length", StringComparison.Ordinal));
    }

    [Fact]
    public async Task World_size_one_is_a_no_op()
    {
        await using var ring = new Ring(1);
        var buffer = new[] { 1f, 2f, 3f };
        await new RingAllReduce(ring.Transports[0]).SumAsync(buffer, 0);
        Assert.Equal([1f, 2f, 3f], buffer);
    }

    internal static float[][] RandomBuffers(int world, int length, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, world).Select(_ => Enumerable.Range(0, length).Select(_ => (random.NextSingle() * 2) - 1).ToArray()).ToArray();
    }

    internal static float[] SerialSum(float[][] buffers, int length)
    {
        var sum = new float[length];
        foreach (var buffer in buffers)
            for (var i = 0; i < length; i++) sum[i] += buffer[i];
        return sum;
    }

    internal static double[] SerialSumInDouble(float[][] buffers, int length)
    {
        var sum = new double[length];
        foreach (var buffer in buffers)
            for (var i = 0; i < length; i++) sum[i] += buffer[i];
        return sum;
    }

    internal static void AssertBitIdentical(float[] expected, float[] actual) =>
        Assert.True(MemoryMarshal.AsBytes(expected.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(actual.AsSpan())), "ranks disagree bit-wise");

    private sealed class Ring(int world) : IAsyncDisposable
    {
        public IReadOnlyList<InMemoryRingTransport> Transports { get; } = InMemoryRingTransport.CreateRing(world);

        public Task SumAsync(float[][] buffers, long operation, int maxPieceFloats) =>
            Task.WhenAll(Transports.Select((t, rank) => new RingAllReduce(t, maxPieceFloats, TimeSpan.FromSeconds(60)).SumAsync(buffers[rank], operation)));

        public async ValueTask DisposeAsync()
        {
            foreach (var t in Transports) await t.DisposeAsync();
        }
    }
}
