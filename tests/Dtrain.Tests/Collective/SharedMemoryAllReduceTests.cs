using System.Runtime.InteropServices;
using Dtrain.Collective;

namespace Dtrain.Tests.Collective;

/// <summary>
/// The shared-memory group all-reduce (real /dev/shm segments and futexes; the ranks are threads of this process, the
/// ring that forms the group is in memory): bit-identical to the ring over the same values, agreement on forming,
/// and failures that name the peer instead of hanging.
/// </summary>
public class SharedMemoryAllReduceTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>A group of ranks formed over an in-memory ring, with the rings kept for comparison.</summary>
    private sealed class Group : IAsyncDisposable
    {
        public IReadOnlyList<InMemoryRingTransport> Transports { get; }
        public RingAllReduce[] Rings { get; }
        public SharedMemoryAllReduce?[] Members { get; }
        public string?[] WhyNot { get; }

        private Group(IReadOnlyList<InMemoryRingTransport> transports, RingAllReduce[] rings, (SharedMemoryAllReduce?, string?)[] formed)
        {
            Transports = transports;
            Rings = rings;
            Members = formed.Select(f => f.Item1).ToArray();
            WhyNot = formed.Select(f => f.Item2).ToArray();
        }

        public static async Task<Group> FormAsync(int world, int slotFloats, Func<int, bool>? willing = null, Func<int, bool>? local = null, TimeSpan? operationTimeout = null,
            TimeProvider? clock = null)
        {
            var transports = InMemoryRingTransport.CreateRing(world);
            var rings = transports.Select(t => new RingAllReduce(t, operationTimeout: Timeout)).ToArray();
            var formed = await Task.WhenAll(rings.Select((ring, rank) => SharedMemoryAllReduce.FormAsync(ring, willing?.Invoke(rank) ?? true, local?.Invoke(rank) ?? true, -1000,
                operationTimeout ?? Timeout, slotFloats, clock: clock)));
            return new Group(transports, rings, formed);
        }

        public Task SumAsync(float[][] buffers, long operation) =>
            Task.WhenAll(buffers.Select((b, rank) => Members[rank]!.SumAsync(b, operation)));

        public async ValueTask DisposeAsync()
        {
            foreach (var m in Members) if (m is not null) await m.DisposeAsync();
            foreach (var t in Transports) await t.DisposeAsync();
        }
    }

    private static float[][] RandomBuffers(int world, int length, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, world).Select(_ => Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1) * (1 << random.Next(12))).ToArray()).ToArray();
    }

    private static void AssertBitIdentical(float[] expected, float[] actual, string what)
    {
        var e = MemoryMarshal.Cast<float, int>(expected);
        var a = MemoryMarshal.Cast<float, int>(actual);
        for (var i = 0; i < e.Length; i++)
            if (e[i] != a[i]) Assert.Fail($"{what}: element {i} is {actual[i]:R}, the ring gives {expected[i]:R}");
    }

    [Theory]
    [InlineData(2, 1, 64)]
    [InlineData(2, 1000, 64)]
    [InlineData(3, 1001, 64)]
    [InlineData(4, 10_007, 1000)]
    [InlineData(4, 3, 64)]
    [InlineData(5, 100_003, 4096)]
    [InlineData(2, 300_000, SharedMemoryAllReduce.DefaultSlotFloats)]
    public async Task Sums_are_bit_identical_to_the_ring_on_every_rank(int world, int length, int slotFloats)
    {
        await using var group = await Group.FormAsync(world, slotFloats);
        Assert.All(group.Members, Assert.NotNull);
        for (var op = 0; op < 3; op++)
        {
            var values = RandomBuffers(world, length, seed: op * 10 + world);
            var viaRing = values.Select(v => v.ToArray()).ToArray();
            var viaGroup = values.Select(v => v.ToArray()).ToArray();
            await Task.WhenAll(group.Rings.Select((ring, rank) => ring.SumAsync(viaRing[rank], 100 + op)));
            await group.SumAsync(viaGroup, op).WaitAsync(Timeout);
            for (var rank = 0; rank < world; rank++) AssertBitIdentical(viaRing[0], viaGroup[rank], $"operation {op}, rank {rank}");
        }
    }

    [Fact]
    public async Task Operations_called_back_to_back_run_in_call_order()
    {
        const int world = 3, length = 5000, operations = 5;
        await using var group = await Group.FormAsync(world, 777);
        var perOp = Enumerable.Range(0, operations).Select(op => Enumerable.Range(0, world).Select(rank => Enumerable.Repeat((float)(op * 10 + rank), length).ToArray()).ToArray()).ToArray();
        // Every rank queues all operations at once; each runs after the one before it.
        await Task.WhenAll(Enumerable.Range(0, operations).SelectMany(op => Enumerable.Range(0, world).Select(rank => group.Members[rank]!.SumAsync(perOp[op][rank], op)))).WaitAsync(Timeout);
        for (var op = 0; op < operations; op++)
            for (var rank = 0; rank < world; rank++)
                Assert.All(perOp[op][rank], v => Assert.Equal(op * 10 * world + 3, v));
    }

    [Fact]
    public async Task No_segment_file_is_left_once_the_group_is_formed_or_disposed()
    {
        string[] paths;
        await using (var group = await Group.FormAsync(3, 1024))
        {
            paths = group.Members.SelectMany(m => m!.FilePaths).Distinct().ToArray();
            Assert.Equal(3, paths.Length);
            Assert.All(paths, p => Assert.StartsWith("/dev/shm/dtrain-group-", p, StringComparison.Ordinal));
            Assert.All(paths, p => Assert.False(File.Exists(p), $"{p} outlived forming the group"));
            var buffers = RandomBuffers(3, 5000, 1);
            await group.SumAsync(buffers, 0).WaitAsync(Timeout);
        }
        Assert.All(paths, p => Assert.False(File.Exists(p)));
    }

    [Fact]
    public async Task A_rank_that_is_unwilling_or_whose_neighbour_is_elsewhere_makes_every_rank_use_the_ring()
    {
        await using (var group = await Group.FormAsync(3, 1024, willing: rank => rank != 1))
        {
            Assert.All(group.Members, Assert.Null);
            Assert.Contains("turned off", group.WhyNot[1], StringComparison.Ordinal);
            Assert.Contains("rank 1", group.WhyNot[0], StringComparison.Ordinal);
            Assert.Contains("rank 1", group.WhyNot[2], StringComparison.Ordinal);
        }
        await using (var group = await Group.FormAsync(4, 1024, local: rank => rank != 3))
        {
            Assert.All(group.Members, Assert.Null);
            Assert.Contains("not shared memory", group.WhyNot[3], StringComparison.Ordinal);
            Assert.Contains("rank 3", group.WhyNot[0], StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Ranks_that_call_their_sums_in_different_orders_fail_saying_so()
    {
        await using var group = await Group.FormAsync(2, 1024);
        var a = new float[100];
        var b = new float[100];
        var first = group.Members[0]!.SumAsync(a, 1);
        var second = group.Members[1]!.SumAsync(b, 2);
        var e0 = await Assert.ThrowsAsync<CollectiveException>(() => first.WaitAsync(Timeout));
        var e1 = await Assert.ThrowsAsync<CollectiveException>(() => second.WaitAsync(Timeout));
        Assert.Contains("same order", e0.Message + e1.Message, StringComparison.Ordinal);
        // The group is out of step for good: a later sum fails at once.
        await Assert.ThrowsAsync<CollectiveException>(() => group.Members[0]!.SumAsync(a, 3).WaitAsync(Timeout));
    }

    [Fact]
    public async Task A_peer_that_leaves_fails_the_waiting_rank_naming_it()
    {
        var group = await Group.FormAsync(3, 1024);
        try
        {
            var waiting = group.Members[0]!.SumAsync(new float[5000], 0);
            var other = group.Members[1]!.SumAsync(new float[5000], 0);
            await Task.Delay(100);
            Assert.False(waiting.IsCompleted);
            await group.Members[2]!.DisposeAsync();
            var e = await Assert.ThrowsAsync<CollectiveException>(() => waiting.WaitAsync(Timeout));
            Assert.Equal(2, e.PeerRank);
            Assert.Contains("rank 2", e.Message, StringComparison.Ordinal);
            Assert.Contains("left the group", e.Message, StringComparison.Ordinal);
            await Assert.ThrowsAnyAsync<CollectiveException>(() => other.WaitAsync(Timeout));
        }
        finally
        {
            await group.DisposeAsync();
        }
    }

    [Fact]
    public async Task Cancelling_a_waiting_sum_ends_it_and_its_peers()
    {
        await using var group = await Group.FormAsync(2, 1024);
        using var cancel = new CancellationTokenSource();
        var waiting = group.Members[0]!.SumAsync(new float[5000], 0, cancel.Token);
        await Task.Delay(100);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(Timeout));
        // The other rank, arriving later, finds the first one gone instead of waiting out its timeout.
        var e = await Assert.ThrowsAsync<CollectiveException>(() => group.Members[1]!.SumAsync(new float[5000], 0).WaitAsync(Timeout));
        Assert.Equal(0, e.PeerRank);
    }

    [Fact]
    public async Task A_rank_that_never_arrives_times_the_sum_out_naming_it()
    {
        await using var group = await Group.FormAsync(2, 1024, operationTimeout: TimeSpan.FromMilliseconds(300));
        var e = await Assert.ThrowsAsync<CollectiveTimeoutException>(() => group.Members[0]!.SumAsync(new float[10], 5).WaitAsync(Timeout));
        Assert.Equal(1, e.PeerRank);
        Assert.Contains("timed out", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_operation_deadline_follows_the_clock_the_group_is_given()
    {
        // An hour's timeout on a clock the test moves: the sum fails once the clock has moved past it, not before.
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        await using var group = await Group.FormAsync(2, 1024, operationTimeout: TimeSpan.FromHours(1), clock: clock);
        var waiting = group.Members[0]!.SumAsync(new float[10], 5);
        await Task.Delay(200);
        Assert.False(waiting.IsCompleted);
        clock.Advance(TimeSpan.FromHours(1) + TimeSpan.FromSeconds(1));
        var e = await Assert.ThrowsAsync<CollectiveTimeoutException>(() => waiting.WaitAsync(Timeout));
        Assert.Equal(1, e.PeerRank);
        Assert.Contains("timed out after 3600 s", e.Message, StringComparison.Ordinal);
    }

    /// <summary>Every rank registers a buffer of <paramref name="length"/> values (a collective call).</summary>
    private static async Task<RegisteredBuffer[]> RegisterAsync(Group group, int length, long operation = -998)
    {
        var registered = await Task.WhenAll(group.Members.Select(m => m!.RegisterBufferAsync(length, operation))).WaitAsync(Timeout);
        Assert.All(registered, Assert.NotNull);
        return registered!;
    }

    [Theory]
    [InlineData(2, 1)]
    [InlineData(2, 300_001)]
    [InlineData(3, 1001)]
    [InlineData(4, 10_007)]
    [InlineData(5, 100_003)]
    public async Task Sums_of_registered_buffers_are_zero_copy_and_bit_identical_to_the_ring(int world, int length)
    {
        // Slot size 64: a sum that went through the slots would take many blocks; the registered path takes none.
        await using var group = await Group.FormAsync(world, 64);
        var registered = await RegisterAsync(group, length);
        try
        {
            // The whole buffer, then slices as a replica's buckets are (the same slice on every rank).
            var slices = new List<(int Start, int Length)> { (0, length) };
            if (length > 10) slices.AddRange([(0, length / 3), (length / 3, length - length / 3), (length / 2, 7)]);
            var op = 0;
            foreach (var (start, count) in slices)
            {
                var values = RandomBuffers(world, count, seed: op * 10 + world);
                var viaRing = values.Select(v => v.ToArray()).ToArray();
                await Task.WhenAll(group.Rings.Select((ring, rank) => ring.SumAsync(viaRing[rank], 100 + op)));
                for (var rank = 0; rank < world; rank++)
                {
                    registered[rank].Span.Fill(float.NaN);
                    values[rank].CopyTo(registered[rank].Span[start..]);
                }
                await Task.WhenAll(registered.Select((r, rank) => group.Members[rank]!.SumAsync(r.Memory.Slice(start, count), op))).WaitAsync(Timeout);
                for (var rank = 0; rank < world; rank++)
                {
                    AssertBitIdentical(viaRing[0], registered[rank].Span.Slice(start, count).ToArray(), $"slice [{start}, +{count}), rank {rank}");
                    // Values outside the slice are not touched.
                    Assert.All(registered[rank].Span[..start].ToArray(), v => Assert.True(float.IsNaN(v), $"rank {rank}: a value before the slice was written"));
                    Assert.All(registered[rank].Span[(start + count)..].ToArray(), v => Assert.True(float.IsNaN(v), $"rank {rank}: a value after the slice was written"));
                }
                op++;
            }
            // Memory of the caller's own still goes through the slots, on the same group.
            var own = RandomBuffers(world, 5000, seed: 7);
            var expected = own.Select(v => v.ToArray()).ToArray();
            await Task.WhenAll(group.Rings.Select((ring, rank) => ring.SumAsync(expected[rank], 200)));
            await group.SumAsync(own, op).WaitAsync(Timeout);
            for (var rank = 0; rank < world; rank++) AssertBitIdentical(expected[0], own[rank], $"own memory, rank {rank}");
        }
        finally
        {
            foreach (var r in registered) ((IDisposable)r).Dispose();
        }
    }

    [Fact]
    public async Task Ranks_that_sum_different_slices_of_their_registered_buffers_fail_saying_so()
    {
        await using var group = await Group.FormAsync(2, 1024);
        var registered = await RegisterAsync(group, 1000);
        var first = group.Members[0]!.SumAsync(registered[0].Memory.Slice(0, 100), 1);
        var second = group.Members[1]!.SumAsync(registered[1].Memory.Slice(100, 100), 1);
        var e0 = await Assert.ThrowsAsync<CollectiveException>(() => first.WaitAsync(Timeout));
        var e1 = await Assert.ThrowsAsync<CollectiveException>(() => second.WaitAsync(Timeout));
        Assert.Contains("values at 100 of its registered buffer", e0.Message + e1.Message, StringComparison.Ordinal);
        foreach (var r in registered) ((IDisposable)r).Dispose();
    }

    [Fact]
    public async Task Ranks_that_register_different_lengths_fail_saying_so()
    {
        await using var group = await Group.FormAsync(2, 1024);
        var first = group.Members[0]!.RegisterBufferAsync(1000, -998);
        var second = group.Members[1]!.RegisterBufferAsync(1001, -998);
        var e0 = await Assert.ThrowsAsync<CollectiveException>(() => first.WaitAsync(Timeout));
        var e1 = await Assert.ThrowsAsync<CollectiveException>(() => second.WaitAsync(Timeout));
        Assert.Contains("same lengths", e0.Message + e1.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_registered_buffer_outlives_its_group_and_leaves_no_file()
    {
        RegisteredBuffer[] registered;
        await using (var group = await Group.FormAsync(3, 1024))
        {
            var before = Directory.GetFiles("/dev/shm", "dtrain-group-*.buf").ToHashSet();
            registered = await RegisterAsync(group, 4096);
            Assert.DoesNotContain(Directory.GetFiles("/dev/shm", "dtrain-group-*.buf"), f => !before.Contains(f));
            for (var rank = 0; rank < 3; rank++) registered[rank].Span.Fill(rank + 1);
            await Task.WhenAll(registered.Select((r, rank) => group.Members[rank]!.SumAsync(r.Memory, 0))).WaitAsync(Timeout);
        }
        // The group is gone; each owner still reads its buffer (the sums), then lets it go.
        foreach (var r in registered)
        {
            Assert.All(r.Span.ToArray(), v => Assert.Equal(6f, v));
            ((IDisposable)r).Dispose();
            Assert.Throws<ObjectDisposedException>(() => r.Span.Length);
        }
    }
}
