using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Runs <c>work</c> on items on several threads and hands the results to <c>consume</c> on the calling thread in the
/// items' order, so the output never depends on the thread count. Items are enumerated on one thread; at most a few
/// items per thread are in flight (bounded memory). With one thread everything runs on the calling thread.
/// </summary>
internal static class OrderedParallel
{
    public static void Run<TIn, TOut>(IEnumerable<TIn> items, int threads, Func<int, TIn, TOut> work, Action<TOut> consume, CancellationToken cancel)
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
        var window = threads * 2 + 2;
        var slots = new TOut[window];
        var filled = new bool[window];
        var gate = new object();
        Exception? failure = null;
        long produced = -1;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        using var free = new SemaphoreSlim(window);
        using var queue = new BlockingCollection<(long Seq, TIn Item)>(window);
        using var wake = stop.Token.Register(() => { lock (gate) Monitor.PulseAll(gate); });

        void Fail(Exception e)
        {
            lock (gate)
            {
                failure ??= e;
                Monitor.PulseAll(gate);
            }
            stop.Cancel();
        }

        var producer = new Thread(() =>
        {
            long seq = 0;
            try
            {
                foreach (var item in items)
                {
                    free.Wait(stop.Token);
                    queue.Add((seq++, item), stop.Token);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
            catch (Exception e) { Fail(e); }
            finally
            {
                queue.CompleteAdding();
                lock (gate)
                {
                    produced = seq;
                    Monitor.PulseAll(gate);
                }
            }
        }) { IsBackground = true, Name = "prepare-read" };
        var workers = Enumerable.Range(0, threads).Select(w => new Thread(() =>
        {
            try
            {
                foreach (var (seq, item) in queue.GetConsumingEnumerable(stop.Token))
                {
                    var result = work(w, item);
                    lock (gate)
                    {
                        slots[seq % window] = result;
                        filled[seq % window] = true;
                        Monitor.PulseAll(gate);
                    }
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested) { }
            catch (Exception e) { Fail(e); }
        }) { IsBackground = true, Name = $"prepare-{w}" }).ToList();
        producer.Start();
        foreach (var t in workers) t.Start();
        try
        {
            for (long next = 0; ; next++)
            {
                TOut result;
                lock (gate)
                {
                    var slot = next % window;
                    while (!filled[slot] && failure is null && !stop.IsCancellationRequested && (produced < 0 || next < produced)) Monitor.Wait(gate);
                    if (failure is not null || stop.IsCancellationRequested || !filled[slot]) break;
                    result = slots[slot];
                    slots[slot] = default!;
                    filled[slot] = false;
                }
                consume(result);
                free.Release();
            }
        }
        catch (Exception e)
        {
            Fail(e);
        }
        finally
        {
            stop.Cancel();
            producer.Join();
            foreach (var t in workers) t.Join();
        }
        if (failure is not null) ExceptionDispatchInfo.Throw(failure);
        cancel.ThrowIfCancellationRequested();
    }
}
