using Dtrain.Serving;
using Microsoft.Extensions.Time.Testing;

namespace Dtrain.Tests.Serving;

/// <summary>
/// The inference thread's batching window and wake-up, on the queue itself with the tiny trained classifier: the window
/// counts from a request's queueing (driven by a fake clock), and a queued request is taken without a thread-pool thread.
/// </summary>
[Collection(InferenceQueueTests.Alone)]   // one test blocks every thread-pool thread of the process for a moment
public sealed class InferenceQueueTests(ServingModels models) : IClassFixture<ServingModels>
{
    public const string Alone = "thread pool blocked on purpose";

    static readonly TimeSpan Bound = TimeSpan.FromSeconds(60);

    static PredictWork Work(string text) => new() { Texts = [text] };

    [Fact]
    public async Task A_request_that_waited_its_window_in_the_queue_is_classified_without_waiting_another()
    {
        var clock = new FakeTimeProvider();
        using var queue = new InferenceQueue(new ServingOptions { ModelPath = models.Classifier, Port = 0, MaxWaitMs = 1000, Time = clock }, new ServingMetrics());
        // Queued while the inference thread is busy (here: not yet started), for its whole window ...
        var late = Work("win money now");
        Assert.True(queue.TryEnqueue(late));
        clock.Advance(TimeSpan.FromMilliseconds(1000));
        queue.Start();
        await queue.Loaded;
        // ... it goes at once: the fake clock never moves again, so a window counted from its taking would never end.
        var predictions = await late.Done.Task.WaitAsync(Bound);
        Assert.Single(predictions);

        // A request queued now waits its window for others (the clock's timer ends it), and those that join share its pass.
        var first = Work("meeting notes");
        Assert.True(queue.TryEnqueue(first));
        Assert.True(SpinWait.SpinUntil(() => queue.Depth == 0, Bound), "the inference thread did not take the request");
        var joined = Work("win win");
        Assert.True(queue.TryEnqueue(joined));
        Assert.True(SpinWait.SpinUntil(() => queue.Depth == 0, Bound), "the request did not join the waiting batch");
        clock.Advance(TimeSpan.FromMilliseconds(999));
        Assert.False(first.Done.Task.IsCompleted, "the batch ran before its window ended");
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Single(await first.Done.Task.WaitAsync(Bound));
        Assert.Single(await joined.Done.Task.WaitAsync(Bound));
    }

    [Fact]
    public async Task A_window_whose_clock_moves_while_its_timer_is_made_still_ends_when_its_time_is_up()
    {
        // The clock moves 999 ms just as the inference thread makes the window's timer (as a test's Advance, or a
        // real clock, may between reading the time left and making the timer): a timer counted from its making
        // would end at 1999 ms, and this clock moves only once more, to 1000 ms.
        var clock = new ClockMovingAtTimer(TimeSpan.FromMilliseconds(999));
        using var queue = new InferenceQueue(new ServingOptions { ModelPath = models.Classifier, Port = 0, MaxWaitMs = 1000, Time = clock }, new ServingMetrics());
        queue.Start();
        await queue.Loaded;
        var work = Work("meeting notes");
        Assert.True(queue.TryEnqueue(work));
        Assert.True(SpinWait.SpinUntil(() => clock.Moved, Bound), "the inference thread made no timer for the window");
        Assert.False(work.Done.Task.IsCompleted, "the batch ran before its window ended");
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Single(await work.Done.Task.WaitAsync(Bound));
    }

    /// <summary>A fake clock that moves by <paramref name="step"/> the first time a timer is made on it, before making it.</summary>
    sealed class ClockMovingAtTimer(TimeSpan step) : FakeTimeProvider
    {
        int moved;

        public bool Moved => Volatile.Read(ref moved) == 1;

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            if (Interlocked.Exchange(ref moved, 1) == 0) Advance(step);
            return base.CreateTimer(callback, state, dueTime, period);
        }
    }

    [Fact]
    public async Task A_queued_request_is_taken_while_every_thread_pool_thread_is_busy()
    {
        using var queue = new InferenceQueue(new ServingOptions { ModelPath = models.Classifier, Port = 0, MaxBatch = 1, MaxWaitMs = 0 }, new ServingMetrics());
        queue.Start();
        await queue.Loaded;
        // Every pool thread blocked, and far more blocked work queued behind them than the pool would add threads for
        // in the bound: a wake-up that needs a pool thread comes only after the gate opens. (Not disposed: blocked work
        // still runs through it after the test.)
        var gate = new ManualResetEventSlim(false);
        var blockers = ThreadPool.ThreadCount + 1000;
        var work = Work("win money now");
        try
        {
            for (var i = 0; i < blockers; i++) ThreadPool.UnsafeQueueUserWorkItem(_ => gate.Wait(), null);
            Assert.True(queue.TryEnqueue(work));
            Assert.True(SpinWait.SpinUntil(() => queue.Depth == 0, TimeSpan.FromSeconds(10)), "the inference thread took the request only once a thread-pool thread was free");
        }
        finally
        {
            gate.Set();
        }
        Assert.Single(await work.Done.Task.WaitAsync(Bound));
    }
}

/// <summary>Runs <see cref="InferenceQueueTests"/> with no other test beside it: a test that blocks the thread pool stalls every other test's continuations.</summary>
[CollectionDefinition(InferenceQueueTests.Alone, DisableParallelization = true)]
public sealed class InferenceQueueAloneCollection;
