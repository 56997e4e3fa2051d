using Dtrain.Data.Datasets;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// <see cref="OrderedParallel"/> (real threads): results are consumed in the items' order whatever the threads' timing;
/// the enumeration and the consuming never run on two threads at once, nor a worker index on two threads; at most
/// 2 × threads + 2 items are taken and not consumed; the first failure of the enumeration, a work or a consume is thrown
/// as it is and stops the rest; a cancellation ends the run with OperationCanceledException.
/// </summary>
public sealed class OrderedParallelTests
{
    /// <summary>Work whose duration varies by item (so results arrive out of order), seeded.</summary>
    static int Jittered(int item)
    {
        var spins = (item * 7919) % 13 * 2000;
        Thread.SpinWait(spins);
        if (item % 5 == 0) Thread.Sleep(1);
        return item * 3;
    }

    [Theory]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(3, false)]
    [InlineData(8, false)]
    [InlineData(2, true)]
    [InlineData(3, true)]
    public void Results_are_consumed_in_the_items_order_and_every_one_once(int threads, bool readAhead)
    {
        var got = new List<int>();
        OrderedParallel.Run(Enumerable.Range(0, 500), threads, (_, i) => Jittered(i), got.Add, CancellationToken.None, readAhead);
        Assert.Equal(Enumerable.Range(0, 500).Select(i => i * 3), got);
    }

    [Fact]
    public void The_enumeration_the_consuming_and_each_worker_index_never_run_on_two_threads_at_once()
    {
        const int threads = 4;
        int enumerating = 0, consuming = 0, overlaps = 0;
        var busy = new int[threads];
        var consumers = new HashSet<int>();
        IEnumerable<int> Items()
        {
            for (var i = 0; i < 400; i++)
            {
                if (Interlocked.Increment(ref enumerating) != 1) Interlocked.Increment(ref overlaps);
                Thread.SpinWait(500);
                Interlocked.Decrement(ref enumerating);
                yield return i;
            }
        }
        var got = new List<int>();
        OrderedParallel.Run(Items(), threads, (w, i) =>
        {
            if (Interlocked.Increment(ref busy[w]) != 1) Interlocked.Increment(ref overlaps);
            var r = Jittered(i);
            Interlocked.Decrement(ref busy[w]);
            return r;
        }, r =>
        {
            if (Interlocked.Increment(ref consuming) != 1) Interlocked.Increment(ref overlaps);
            lock (consumers) consumers.Add(Environment.CurrentManagedThreadId);
            Thread.SpinWait(300);
            got.Add(r);
            Interlocked.Decrement(ref consuming);
        }, CancellationToken.None);
        Assert.Equal(0, overlaps);
        Assert.Equal(Enumerable.Range(0, 400).Select(i => i * 3), got);
    }

    [Theory]
    [InlineData(2, false)]
    [InlineData(3, false)]
    [InlineData(2, true)]
    [InlineData(3, true)]
    public void At_most_two_per_thread_and_two_more_items_are_taken_and_not_consumed(int threads, bool readAhead)
    {
        long takenCount = 0, consumedCount = 0, most = 0;
        IEnumerable<int> Items()
        {
            for (var i = 0; i < 300; i++)
            {
                var inFlight = Interlocked.Increment(ref takenCount) - Interlocked.Read(ref consumedCount);
                InterlockedMax(ref most, inFlight);
                yield return i;
            }
        }
        // The consumer is slow: without a bound the workers would run far ahead of it.
        OrderedParallel.Run(Items(), threads, (_, i) => i, _ =>
        {
            Thread.Sleep(1);
            Interlocked.Increment(ref consumedCount);
        }, CancellationToken.None, readAhead);
        Assert.Equal(300, consumedCount);
        // Ran ahead, but no further than the window (read ahead: the reading thread's buffer, the one it holds and the
        // workers' smaller window together, as many as before the workers took their own items).
        Assert.InRange(most, threads + 1, threads * 2 + (readAhead ? 3 : 2));
    }

    static void InterlockedMax(ref long target, long value)
    {
        for (var seen = Interlocked.Read(ref target); value > seen; seen = Interlocked.Read(ref target))
            if (Interlocked.CompareExchange(ref target, value, seen) == seen) return;
    }

    [Theory]
    [InlineData("work", false)]
    [InlineData("consume", false)]
    [InlineData("enumeration", false)]
    [InlineData("work", true)]
    [InlineData("consume", true)]
    [InlineData("enumeration", true)]
    public void The_first_failure_is_thrown_as_it_is_and_stops_the_run(string where, bool readAhead)
    {
        var consumedCount = 0;
        var worked = 0;
        IEnumerable<int> Items()
        {
            for (var i = 0; i < 100_000; i++)
            {
                if (where == "enumeration" && i == 50) throw new InvalidDataException("bad item 50");
                yield return i;
            }
        }
        var e = Assert.Throws<InvalidDataException>(() => OrderedParallel.Run(Items(), 3, (_, i) =>
        {
            Interlocked.Increment(ref worked);
            if (where == "work" && i == 50) throw new InvalidDataException("bad item 50");
            return i;
        }, i =>
        {
            if (where == "consume" && i == 50) throw new InvalidDataException("bad item 50");
            consumedCount++;
        }, CancellationToken.None, readAhead));
        Assert.Equal("bad item 50", e.Message);
        Assert.True(consumedCount <= 50, $"consumed {consumedCount}: results after the failed item were consumed");
        Assert.True(worked < 1000, $"worked {worked} items: the failure did not stop the run");
    }

    [Fact]
    public void A_cancellation_ends_the_run_with_OperationCanceledException()
    {
        using var cts = new CancellationTokenSource();
        var consumedCount = 0;
        Assert.ThrowsAny<OperationCanceledException>(() => OrderedParallel.Run(Enumerable.Range(0, 1_000_000), 2, (_, i) => i, i =>
        {
            if (++consumedCount == 100) cts.Cancel();
        }, cts.Token));
        Assert.InRange(consumedCount, 100, 100 + 6);
    }

    [Fact]
    public void No_items_consume_nothing()
    {
        var consumedCount = 0;
        OrderedParallel.Run(Enumerable.Empty<int>(), 3, (_, i) => i, _ => consumedCount++, CancellationToken.None);
        Assert.Equal(0, consumedCount);
    }

    [Fact]
    public void A_read_ahead_gives_the_items_in_order_then_the_enumerations_failure_and_stops_its_thread_when_disposed()
    {
        IEnumerable<int> Failing()
        {
            for (var i = 0; i < 20; i++) yield return i;
            throw new InvalidDataException("source cut at 20");
        }
        var got = new List<int>();
        var e = Assert.Throws<InvalidDataException>(() =>
        {
            foreach (var i in OrderedParallel.ReadAhead(Failing(), 3)) got.Add(i);
        });
        Assert.Equal("source cut at 20", e.Message);
        Assert.Equal(Enumerable.Range(0, 20), got);

        // Abandoned after 5 items: disposing stops the reading thread, which disposes the source (its finally runs).
        var read = 0;
        var disposed = false;
        IEnumerable<int> Endless()
        {
            try
            {
                for (var i = 0; ; i++)
                {
                    Interlocked.Increment(ref read);
                    yield return i;
                }
            }
            finally
            {
                disposed = true;
            }
        }
        Assert.Equal(Enumerable.Range(0, 5), OrderedParallel.ReadAhead(Endless(), 4).Take(5));
        Assert.True(disposed, "the source was not disposed when the read-ahead was");
        Assert.InRange(read, 5, 5 + 4 + 1); // never more than the buffer ahead
    }
}
