using System.Globalization;

namespace Dtrain.Bench;

/// <summary>
/// The alpha-beta cost model of docs/scaling.md: predicts data-parallel (and data x pipeline) scaling efficiency for
/// 8..256 workers on 10/25/100 Gb/s networks, flat ring versus hierarchical (shared memory inside a host, a ring
/// between hosts), from a few numbers measured on this machine (`dtrain-bench cluster`). Weak scaling: every worker
/// keeps the per-worker batch of the measured 2-worker run (16 rows), so the global batch grows with the workers.
/// </summary>
public static class ScalingModel
{
    /// <summary>A data-parallel workload: gradient values, per-worker compute, what overlap can hide.</summary>
    sealed record Workload(string Name, double Gradients, double ComputeSeconds, double EarlyShare, double HideableSeconds);

    /// <summary>Model constants; every one is a command-line option (`--name value`).</summary>
    sealed class Options
    {
        /// <summary>W1 per-worker step compute at 16 rows, 1 thread (seconds): the 2-worker cluster's compute_ms.</summary>
        public double W1Compute = 0.095;
        /// <summary>W2 per-worker step compute at 16 rows, 1 thread (seconds).</summary>
        public double W2Compute = 1.35;
        /// <summary>Share of a step's compute that is backward (the rest: forward, optimizer step).</summary>
        public double BackwardShare = 0.55;
        /// <summary>Per-message latency of the network path (seconds): TCP in one datacenter, software included.</summary>
        public double Alpha = 30e-6;
        /// <summary>What the data plane itself moves per worker at most (bytes/s), whatever the wire (socket limit on this machine).</summary>
        public double TransportCap = 2.5e9;
        /// <summary>Reduction cost per value (seconds): one fp32 add streamed from memory.</summary>
        public double Gamma = 0.25e-9;
        /// <summary>Shared-memory bandwidth between workers of one host (bytes/s).</summary>
        public double Shm = 8e9;
        /// <summary>Workers per host for the hierarchical variant.</summary>
        public int PerHost = 8;
        /// <summary>Compute speed-up of a second set of tables (a faster worker: more threads, a GPU): how far scaling goes when compute shrinks.</summary>
        public double Speedup = 20;
        /// <summary>Pipeline layout: micro-batches M and stages K.</summary>
        public int Microbatches = 8, Stages = 4;
    }

    public static int Run(string[] args)
    {
        var o = new Options();
        for (var i = 0; i + 1 < args.Length; i += 2)
        {
            var v = double.Parse(args[i + 1], CultureInfo.InvariantCulture);
            switch (args[i])
            {
                case "--w1-compute": o.W1Compute = v; break;
                case "--w2-compute": o.W2Compute = v; break;
                case "--backward-share": o.BackwardShare = v; break;
                case "--alpha-us": o.Alpha = v * 1e-6; break;
                case "--transport-gbps": o.TransportCap = v * 1e9; break;
                case "--shm-gbps": o.Shm = v * 1e9; break;
                case "--per-host": o.PerHost = (int)v; break;
                case "--speedup": o.Speedup = v; break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        }
        // Gradient values and the share in the early bucket (top layer + head: ready while layer 0 is still in backward).
        const double w1 = 886_880, w1Early = (526_336 + 24_672) / 886_880.0;
        const double w2 = 12_965_984, w2Early = (8_396_800 + 98_400) / 12_965_984.0;
        // The early bucket's sum can hide behind the backward of layer 0 and the embedding: about half of backward.
        Workload Dp(string name, double n, double compute, double early) => new(name, n, compute, early, 0.5 * o.BackwardShare * compute);
        int[] workers = [8, 16, 32, 64, 128, 256];
        double[] networks = [10, 25, 100];

        Console.WriteLine($"# Predicted scaling efficiency (weak scaling, 16 rows per worker; alpha {o.Alpha * 1e6:0.#} us, data plane cap {o.TransportCap / 1e9:0.##} GB/s, " +
                          $"shm {o.Shm / 1e9:0.##} GB/s, {o.PerHost} workers per host; W1 compute {o.W1Compute * 1e3:0} ms, W2 {o.W2Compute * 1e3:0} ms per worker step)");
        Console.WriteLine();
        // Calibration check: the same formulas with this machine's loopback gRPC ring (2 ranks, 0.32 GB/s bus bandwidth).
        var loopback = new Options { TransportCap = 0.32e9, Alpha = 100e-6 };
        Console.WriteLine($"Calibration (2 workers on loopback, gRPC ring at 0.32 GB/s): predicted all-reduce W1 {1e3 * Ring(w1, 2, 4, loopback.TransportCap, loopback.Alpha, o.Gamma):0} ms " +
                          $"(measured ~18 ms wait), W2 {1e3 * Ring(w2, 2, 4, loopback.TransportCap, loopback.Alpha, o.Gamma):0} ms (measured 180-600 ms wait).");
        Console.WriteLine();
        Console.WriteLine("Each cell: flat ring fp32 / hierarchical fp32 / hierarchical bf16 (overlap on).");
        foreach (var speedup in new[] { 1.0, o.Speedup })
        {
            var workloads = new[] { Dp("W1 (0.89 M parameters)", w1, o.W1Compute / speedup, w1Early), Dp("W2 (12.97 M parameters)", w2, o.W2Compute / speedup, w2Early) };
            foreach (var w in workloads)
            {
                Console.WriteLine();
                Console.WriteLine(speedup == 1 ? $"## {w.Name}, compute as measured ({w.ComputeSeconds * 1e3:0} ms per step)" : $"## {w.Name}, compute {speedup:0}x faster ({w.ComputeSeconds * 1e3:0.#} ms per step)");
                Console.WriteLine();
                Console.WriteLine("| workers | " + string.Join(" | ", networks.Select(g => $"{g:0} Gb/s")) + " |");
                Console.WriteLine("|---|" + string.Concat(networks.Select(_ => "---|")));
                foreach (var n in workers)
                    Console.WriteLine($"| {n} | " + string.Join(" | ", networks.Select(g =>
                        $"{Efficiency(w, n, g, o, hierarchical: false, 4):0.00} / {Efficiency(w, n, g, o, hierarchical: true, 4):0.00} / {Efficiency(w, n, g, o, hierarchical: true, 2):0.00}")) + " |");
                Console.WriteLine();
                foreach (var g in networks)
                {
                    var stop = workers.FirstOrDefault(n => Efficiency(w, n, g, o, false, 4) < 0.85);
                    Console.WriteLine(stop == 0
                        ? $"- {g:0} Gb/s: flat ring stays >= 0.85 up to 256 workers"
                        : $"- {g:0} Gb/s: flat ring drops below 0.85 at {stop} workers ({Breakdown(w, stop, g, o)})");
                }
            }
        }

        // Data x pipeline: an 8-layer W2-sized LSTM (hidden 1024, 8.4 M parameters per layer), K stages x D replicas.
        Console.WriteLine();
        Console.WriteLine($"## Pipeline layout: 8-layer LSTM, hidden 1024 (~67 M parameters), {o.Stages} stages x D replicas, {o.Microbatches} micro-batches of a 32-row replica batch");
        Console.WriteLine();
        Console.WriteLine("| workers (D x K) | " + string.Join(" | ", networks.Select(g => $"{g:0} Gb/s")) + " |");
        Console.WriteLine("|---|" + string.Concat(networks.Select(_ => "---|")));
        foreach (var n in workers)
            Console.WriteLine($"| {n} ({n / o.Stages} x {o.Stages}) | " + string.Join(" | ", networks.Select(g =>
                $"{Pipeline(n, g, o, false):0.00} / {Pipeline(n, g, o, true):0.00}")) + " |");
        Console.WriteLine();
        Console.WriteLine($"Pipeline cells: flat / hierarchical replica rings (fp32). The bubble alone caps efficiency at M / (M + K - 1) = {(double)o.Microbatches / (o.Microbatches + o.Stages - 1):0.00}.");
        return 0;
    }

    /// <summary>Effective bytes/s for a worker's traffic on a <paramref name="gbps"/> link: the slower of the wire and the data plane.</summary>
    static double Bandwidth(double gbps, Options o) => Math.Min(gbps * 1e9 / 8, o.TransportCap);

    /// <summary>Ring all-reduce of <paramref name="values"/> over <paramref name="w"/> ranks: 2(W-1)/W n s / B + 2(W-1) alpha + (W-1)/W n gamma.</summary>
    static double Ring(double values, int w, double bytesPerValue, double bandwidth, double alpha, double gamma) =>
        w <= 1 ? 0 : 2.0 * (w - 1) / w * values * bytesPerValue / bandwidth + 2.0 * (w - 1) * alpha + (double)(w - 1) / w * values * gamma;

    /// <summary>
    /// Hierarchical: reduce-scatter and all-gather inside each host over shared memory, and g parallel rings of n/g
    /// values between the H = W/g hosts, sharing each host's link (so the link still carries 2(H-1)/H n s bytes),
    /// with 2(H-1) latency steps instead of 2(W-1).
    /// </summary>
    static double Hierarchical(double values, int w, double bytesPerValue, double bandwidth, Options o)
    {
        var g = Math.Min(o.PerHost, w);
        var hosts = Math.Max(1, w / g);
        var inside = 2.0 * (g - 1) / g * values * 4 / o.Shm + 2.0 * (g - 1) * 2e-6 + (double)(g - 1) / g * values * o.Gamma;
        var between = hosts <= 1 ? 0 : 2.0 * (hosts - 1) / hosts * values * bytesPerValue / bandwidth + 2.0 * (hosts - 1) * o.Alpha + (double)(hosts - 1) / hosts * values / g * o.Gamma;
        return inside + between;
    }

    static double AllReduce(double values, int w, double gbps, Options o, bool hierarchical, double bytesPerValue) =>
        hierarchical ? Hierarchical(values, w, bytesPerValue, Bandwidth(gbps, o), o) : Ring(values, w, bytesPerValue, Bandwidth(gbps, o), o.Alpha, o.Gamma);

    /// <summary>compute / (compute + what overlap does not hide): the early bucket's sum runs behind the rest of backward.</summary>
    static double Efficiency(Workload w, int workers, double gbps, Options o, bool hierarchical, double bytesPerValue)
    {
        var early = AllReduce(w.EarlyShare * w.Gradients, workers, gbps, o, hierarchical, bytesPerValue);
        var late = AllReduce((1 - w.EarlyShare) * w.Gradients, workers, gbps, o, hierarchical, bytesPerValue);
        var exposed = Math.Max(0, early - w.HideableSeconds) + late;
        return w.ComputeSeconds / (w.ComputeSeconds + exposed);
    }

    static string Breakdown(Workload w, int workers, double gbps, Options o)
    {
        var n = w.Gradients;
        var bandwidth = Bandwidth(gbps, o);
        var bytes = 2.0 * (workers - 1) / workers * n * 4 / bandwidth;
        var latency = 2.0 * (workers - 1) * o.Alpha;
        return string.Create(CultureInfo.InvariantCulture, $"all-reduce {1e3 * (bytes + latency):0.#} ms = {1e3 * bytes:0.#} ms bytes + {1e3 * latency:0.#} ms latency vs {1e3 * w.ComputeSeconds:0} ms compute");
    }

    /// <summary>
    /// One step of D replicas x K stages: (M + K - 1) micro-batch slots of a stage's compute plus the activation and
    /// gradient transfer between stages (not overlapped), then each stage's replicas all-reduce its n/K parameters.
    /// Efficiency = the replica batch's whole compute on one worker / (K x step time).
    /// </summary>
    static double Pipeline(int workers, double gbps, Options o, bool hierarchical)
    {
        const int layers = 8, rows = 32, seq = 64, hidden = 1024;
        const double perLayer = 8_396_800;
        var k = o.Stages;
        var m = o.Microbatches;
        var d = Math.Max(1, workers / k);
        // W2's compute (2 layers, 16 rows) scaled: per layer and row.
        var layerRow = o.W2Compute / (2 * 16);
        var slot = layers / k * layerRow * rows / m;
        var activation = (double)rows / m * seq * hidden * 4;
        var transfer = 2 * (activation / Bandwidth(gbps, o) + o.Alpha);
        var step = (m + k - 1) * (slot + transfer) + AllReduce(layers / k * perLayer, d, gbps, o, hierarchical, 4);
        return layers * layerRow * rows / (k * step);
    }
}
