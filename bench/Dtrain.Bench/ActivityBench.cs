using System.Diagnostics;
using System.Globalization;
using Dtrain.Collective;
using Dtrain.Distributed;

namespace Dtrain.Bench;

/// <summary>
/// <c>dtrain-bench activity</c>: what reporting a worker's live phase costs the all-reduce. The same in-memory ring
/// all-reduce (3 ranks, small pieces so the progress observer runs often) with and without <see cref="WorkerActivity"/>'s
/// ring observer, interleaved round by round in one run; prints both and their ratio.
/// </summary>
public static class ActivityBench
{
    public static int Run()
    {
        const int world = 3, floats = 4 << 20, piece = 16 * 1024, rounds = 12;
        var buffers = Enumerable.Range(0, world).Select(_ => new float[floats]).ToArray();
        var activities = Enumerable.Range(0, world).Select(_ => new WorkerActivity()).ToArray();
        long op = 0;
        double Once(bool observed)
        {
            var ring = InMemoryRingTransport.CreateRing(world);
            var reducers = Enumerable.Range(0, world).Select(r => new RingAllReduce(ring[r], piece)
            {
                Progress = observed ? activities[r].RingObserver(["w1", "w2", "w3"]) : null,
            }).ToArray();
            var id = ++op;
            var clock = Stopwatch.StartNew();
            Task.WhenAll(reducers.Select((x, r) => x.SumAsync(buffers[r], id))).GetAwaiter().GetResult();
            var ms = clock.Elapsed.TotalMilliseconds;
            foreach (var t in ring) t.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return ms;
        }
        Once(false);
        Once(true);
        var plain = new List<double>();
        var observed = new List<double>();
        for (var i = 0; i < rounds; i++)
        {
            plain.Add(Once(false));
            observed.Add(Once(true));
        }
        var pieces = 2 * (world - 1) * (floats / world / piece + 1);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"in-memory ring all-reduce, {world} ranks, {floats >> 20}M floats, pieces of {piece} floats (~{pieces} progress reports per rank per op), median of {rounds} interleaved rounds:"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  without the activity observer: {BenchArgs.Median(plain),8:F1} ms/op"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  with the activity observer:    {BenchArgs.Median(observed),8:F1} ms/op"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  ratio with/without: {BenchArgs.Median(observed) / BenchArgs.Median(plain):F3}"));
        return 0;
    }
}
