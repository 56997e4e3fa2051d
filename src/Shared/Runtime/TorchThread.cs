using System.Collections.Concurrent;

namespace Dtrain.Runtime;

/// <summary>
/// One long-lived thread that runs all torch work of a replica. libtorch's OpenMP settings (the intra-op thread
/// count) are per calling thread, and every new calling thread gets its own OpenMP team: torch calls made from
/// whichever thread-pool thread serves an RPC would ignore the configured thread count and leave spinning
/// teams behind, oversubscribing the cores. Work queued here always runs on the same thread.
/// </summary>
public sealed class TorchThread : IDisposable
{
    private readonly BlockingCollection<Action> work = new();
    private readonly Thread thread;

    public TorchThread(string name, int threads)
    {
        thread = new Thread(() =>
        {
            if (threads > 0) TorchSharp.torch.set_num_threads(threads);
            foreach (var item in work.GetConsumingEnumerable()) item();
        })
        { IsBackground = true, Name = name };
        thread.Start();
    }

    public Task<T> RunAsync<T>(Func<T> func)
    {
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        work.Add(() =>
        {
            try { tcs.SetResult(func()); }
            catch (Exception e) { tcs.SetException(e); }
        });
        return tcs.Task;
    }

    public Task RunAsync(Action action) => RunAsync(() => { action(); return true; });

    public void Dispose()
    {
        work.CompleteAdding();
        if (Thread.CurrentThread != thread) thread.Join(TimeSpan.FromSeconds(30));
        work.Dispose();
    }
}
