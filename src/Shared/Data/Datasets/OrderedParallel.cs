using System.Runtime.ExceptionServices;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Runs <c>work</c> on items on several threads and hands the results to <c>consume</c> in the items' order, so the
/// output never depends on the thread count. With one thread everything runs on the calling thread.
/// </summary>
/// <remarks>
/// With more than one thread the calling thread is worker 0 and <c>threads - 1</c> threads join it; there is no reading
/// or consuming thread of its own (a 2-core machine runs exactly 2 busy threads, and a hand-off costs no thread switch):
/// each worker takes the next item (the enumeration runs on one worker at a time, under a lock, never two at once),
/// works on it, and posts its result; the worker that posts the result the consumer waits for becomes the consumer and
/// consumes every result ready in order, then goes back to work (<c>consume</c> runs on one worker at a time, in order).
/// At most <c>2 × threads + 2</c> items are taken and not yet consumed (bounded memory): a worker waits for room before
/// taking one. The first failure (of the enumeration, a <c>work</c> or a <c>consume</c>) stops every worker and is
/// thrown as it is; results not consumed are dropped. A worker index <c>w</c> passed to <c>work</c> is used by one
/// thread only. With <c>readAhead</c> (items whose enumeration is work of its own, e.g. decoding a compressed
/// stream) a reading thread enumerates them ahead of the workers into a buffer of <c>threads</c> items, so the
/// decoding and the tokenizing overlap; the workers then have at most <c>threads + 2</c> items in flight (with the one
/// the reading thread holds, <c>2 × threads + 3</c> in all, as a reading thread gated by a window of
/// <c>2 × threads + 2</c> had).
/// </remarks>
internal static class OrderedParallel
{
    public static void Run<TIn, TOut>(IEnumerable<TIn> items, int threads, Func<int, TIn, TOut> work, Action<TOut> consume, CancellationToken cancel, bool readAhead = false)
    {
        if (threads <= 1)
        {
            foreach (var item in items)
            {
                cancel.ThrowIfCancellationRequested();
                consume(work(0, item));
            }
            return;
        }
        cancel.ThrowIfCancellationRequested();
        // Read ahead, the buffer and the workers' window share the bound of 2 x threads + 3 items in flight.
        using var source = (readAhead ? ReadAhead(items, threads) : items).GetEnumerator();
        new Runner<TIn, TOut>(source, threads, readAhead ? threads + 2 : threads * 2 + 2, work, consume, cancel).Run();
    }

    /// <summary>
    /// <paramref name="items"/> enumerated on a thread of their own into a buffer of at most <paramref name="depth"/>;
    /// a failure of the enumeration is thrown after the items before it. Disposing the enumerator stops the reading
    /// thread (once its current item is read) and waits for it.
    /// </summary>
    internal static IEnumerable<T> ReadAhead<T>(IEnumerable<T> items, int depth)
    {
        var gate = new object();
        var buffer = new Queue<T>(depth);
        bool done = false, stop = false;
        Exception? failure = null;
        var reader = new Thread(() =>
        {
            try
            {
                foreach (var item in items)
                    lock (gate)
                    {
                        while (buffer.Count >= depth && !stop) Monitor.Wait(gate);
                        if (stop) return;
                        buffer.Enqueue(item);
                        Monitor.PulseAll(gate);
                    }
            }
            catch (Exception e)
            {
                lock (gate) failure = e;
            }
            finally
            {
                lock (gate)
                {
                    done = true;
                    Monitor.PulseAll(gate);
                }
            }
        }) { IsBackground = true, Name = "prepare-read" };
        reader.Start();
        try
        {
            while (true)
            {
                T item;
                lock (gate)
                {
                    while (buffer.Count == 0 && !done) Monitor.Wait(gate);
                    if (buffer.Count == 0)
                    {
                        if (failure is not null) ExceptionDispatchInfo.Throw(failure);
                        break;
                    }
                    item = buffer.Dequeue();
                    Monitor.PulseAll(gate);
                }
                yield return item;
            }
        }
        finally
        {
            lock (gate)
            {
                stop = true;
                Monitor.PulseAll(gate);
            }
            reader.Join();
        }
    }

    sealed class Runner<TIn, TOut>(IEnumerator<TIn> source, int threads, int window, Func<int, TIn, TOut> work, Action<TOut> consume, CancellationToken cancel)
    {
        /// <summary>Guards the slots, the counts below and <see cref="failure"/>; waited on for room.</summary>
        readonly object gate = new();
        /// <summary>Guards the enumeration (the source, <see cref="taken"/>, <see cref="exhausted"/>).</summary>
        readonly object take = new();
        readonly TOut[] slots = new TOut[window];
        readonly bool[] filled = new bool[window];
        long taken, consumed;
        bool exhausted;
        /// <summary>Items taken or about to be taken and not yet consumed (at most <c>window</c>).</summary>
        int inFlight;
        int waiting;
        bool consuming;
        volatile bool stopped;
        Exception? failure;

        public void Run()
        {
            using var wake = cancel.Register(() =>
            {
                lock (gate)
                {
                    stopped = true;
                    Monitor.PulseAll(gate);
                }
            });
            var others = new Thread[threads - 1];
            for (var i = 0; i < others.Length; i++)
            {
                var w = i + 1;
                others[i] = new Thread(() => Work(w)) { IsBackground = true, Name = $"prepare-{w}" };
                others[i].Start();
            }
            Work(0);
            foreach (var t in others) t.Join();
            if (failure is not null) ExceptionDispatchInfo.Throw(failure);
            cancel.ThrowIfCancellationRequested();
        }

        void Work(int w)
        {
            try
            {
                while (Take() is var (seq, item, any) && any)
                {
                    var result = work(w, item);
                    Post(seq, result);
                }
            }
            catch (Exception e)
            {
                Fail(e);
            }
        }

        /// <summary>Room for one more item, then the next item and its number; nothing when the items are exhausted or the run stopped.</summary>
        (long Seq, TIn Item, bool Any) Take()
        {
            lock (gate)
            {
                while (!stopped && inFlight >= window)
                {
                    waiting++;
                    Monitor.Wait(gate);
                    waiting--;
                }
                if (stopped) return default;
                inFlight++;
            }
            lock (take)
            {
                if (!exhausted && !stopped)
                {
                    if (source.MoveNext()) return (taken++, source.Current, true);
                    exhausted = true;
                }
            }
            lock (gate)
            {
                inFlight--;
                if (waiting > 0) Monitor.Pulse(gate);
            }
            return default;
        }

        /// <summary>Posts result <paramref name="seq"/>; consumes what is ready in order unless another worker is consuming.</summary>
        void Post(long seq, TOut result)
        {
            TOut next;
            lock (gate)
            {
                var slot = (int)(seq % window);
                slots[slot] = result;
                filled[slot] = true;
                if (consuming || !TryNext(out next)) return;
                consuming = true;
            }
            // A consume that throws fails the run (Work), which stops every worker: nobody consumes after it.
            while (true)
            {
                consume(next);
                lock (gate)
                {
                    consumed++;
                    inFlight--;
                    if (waiting > 0) Monitor.Pulse(gate);
                    if (!TryNext(out next))
                    {
                        consuming = false;
                        return;
                    }
                }
            }
        }

        /// <summary>The result to consume next when it is ready and the run goes on (under <see cref="gate"/>).</summary>
        bool TryNext(out TOut next)
        {
            var slot = (int)(consumed % window);
            if (stopped || !filled[slot])
            {
                next = default!;
                return false;
            }
            next = slots[slot];
            slots[slot] = default!;
            filled[slot] = false;
            return true;
        }

        void Fail(Exception e)
        {
            lock (gate)
            {
                if (failure is null && !(e is OperationCanceledException && cancel.IsCancellationRequested)) failure = e;
                stopped = true;
                Monitor.PulseAll(gate);
            }
        }
    }
}
