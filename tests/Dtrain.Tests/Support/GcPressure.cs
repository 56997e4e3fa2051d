using System.Diagnostics;

namespace Dtrain.Tests.Support;

/// <summary>
/// Rounds of torch work while another thread forces garbage collections and runs finalizers flat out: a temporary Scalar
/// or tensor that nothing references any more is then freed as soon as it can be, possibly while libtorch still uses it.
/// </summary>
public static class GcPressure
{
    /// <summary>What a run saw: each failed round (its number and the first line of its message), the rounds run, the collections forced.</summary>
    public sealed record Run(string What, List<string> Failures, int Rounds, int Collections, TimeSpan Elapsed);

    /// <summary>
    /// Runs <paramref name="round"/> (given its 0-based number) at least <paramref name="rounds"/> times while another
    /// thread collects, and more rounds (at most 20 times as many) until the collector has run
    /// <paramref name="untilCollections"/> times (by default as often as <see cref="AssertClean"/> asks: on a loaded
    /// machine the collector thread may get little CPU while the rounds run). A round that throws is a failure named
    /// "<paramref name="what"/> k: message".
    /// </summary>
    public static Run While(int rounds, Action<int> round, string what = "round", int untilCollections = MinimumCollections)
    {
        var stop = 0;
        var collections = 0;
        var collector = new Thread(() =>
        {
            while (Volatile.Read(ref stop) == 0)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                Interlocked.Increment(ref collections);
            }
        }) { IsBackground = true };
        var clock = Stopwatch.StartNew();
        collector.Start();
        var failures = new List<string>();
        var done = 0;
        try
        {
            for (; done < rounds || (Volatile.Read(ref collections) < untilCollections && done < 20 * rounds); done++)
            {
                try
                {
                    round(done);
                }
                catch (Exception e)
                {
                    failures.Add($"{what} {done + 1}: {e.Message.Split('\n')[0]}");
                }
            }
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            collector.Join();
        }
        return new Run(what, failures, done, collections, clock.Elapsed);
    }

    /// <summary>Collections a run must see alongside its rounds to prove anything.</summary>
    public const int MinimumCollections = 50;

    /// <summary>No round failed, and the collector really ran alongside (at least <see cref="MinimumCollections"/> collections), or the run proves nothing.</summary>
    public static void AssertClean(Run run)
    {
        Assert.True(run.Failures.Count == 0, $"{run.Failures.Count} of {run.Rounds} {run.What}s failed: {string.Join("; ", run.Failures.Take(3))}");
        Assert.True(run.Collections >= MinimumCollections, $"only {run.Collections} forced collections during {run.Rounds} {run.What}s ({run.Elapsed.TotalSeconds:F1} s)");
    }
}
