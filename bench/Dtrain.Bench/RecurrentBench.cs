using System.Diagnostics;
using System.Globalization;
using Dtrain.Models;
using Dtrain.Runtime;
using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>
/// One recurrent layer alone (libtorch's LSTM or GRU, input and hidden size H, 64 time steps, forward and backward):
/// time per call for several batch sizes with 1 thread, and for the full batch with 2 threads. It shows what bounds
/// data-parallel (strong) scaling on this machine before any communication: a replica with half the batch still
/// streams the whole recurrent weight matrix (16 H^2 bytes) at every time step, forward and backward, for half the
/// rows; once that matrix no longer fits in the cache, the stream and not the arithmetic sets the time, and half the
/// batch takes more than half as long. The cluster suite's "half batch" row measures the same ceiling on whole steps.
/// </summary>
public static class RecurrentBench
{
    const string Usage = "dtrain-bench recurrent [--cell lstm|gru] [--hidden 256,1024] [--rows 8,16,32,64] [--batch 32] [--rounds 3]";
    const int Steps = 64;

    public static int Run(string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--cell", "--hidden", "--rows", "--batch", "--rounds");
        string? Option(string name) => BenchArgs.Option(args, name);
        var cell = Option("--cell") ?? CellKinds.Lstm;
        if (cell is not (CellKinds.Lstm or CellKinds.Gru)) throw new ArgumentException($"--cell {cell}: lstm or gru (usage: {Usage})");
        // Bounded before libtorch sees them: an allocation it cannot make must be an error here, not in native code.
        int[] List(string name, string fallback, int max) => BenchArgs.Numbers(name, Option(name) ?? fallback, 1, max, Usage);
        int One(string name, string fallback, int max) => BenchArgs.Number(name, Option(name) ?? fallback, 1, max, Usage);
        var hidden = List("--hidden", "256,1024", 4096);
        var batch = One("--batch", "32", 1024);
        if (batch % 2 != 0) throw new ArgumentException($"--batch {batch}: must be even (it is split between 2 replicas)");
        var rows = List("--rows", "8,16,32,64", 1024).Append(batch).Append(batch / 2).Distinct().Order().ToArray();
        var rounds = One("--rounds", "3", 100);
        if (Environment.GetEnvironmentVariable(ChildVariable) is null && NativeAllocator.Library() is not null) return InDtrainSettings(args);
        var gates = cell == CellKinds.Lstm ? 4 : 3;

        Console.WriteLine($"one {cell.ToUpperInvariant()} layer (dtrain's RecurrentStack over libtorch's fused module), input = hidden = H, {Steps} time steps, forward + backward (gradients of input and weights), fp32, " +
                          $"{Environment.ProcessorCount} cores, allocator {NativeAllocator.Describe()}; median of {rounds} rounds, each the mean of calls filling ~0.5 s");
        Console.WriteLine();
        Console.WriteLine("| H | recurrent weight MB | rows | threads | ms/call | ms per row |");
        Console.WriteLine("|---|---|---|---|---|---|");
        var ceilings = new List<string>();
        foreach (var h in hidden)
        {
            var weightMb = (double)gates * h * h * sizeof(float) / (1 << 20);
            var oneThread = new Dictionary<int, double>();
            foreach (var r in rows)
            {
                oneThread[r] = Measure(cell, r, h, threads: 1, rounds);
                Print(h, weightMb, r, 1, oneThread[r]);
            }
            var twoThreads = Measure(cell, batch, h, threads: 2, rounds);
            Print(h, weightMb, batch, 2, twoThreads);
            ceilings.Add(string.Create(CultureInfo.InvariantCulture,
                $"| {h} | {weightMb:F0} | {oneThread[batch] / (2 * oneThread[batch / 2]):F3} | {oneThread[batch] / (2 * twoThreads):F3} |"));
        }
        Console.WriteLine();
        Console.WriteLine($"What the layer alone allows, batch {batch} (scaling efficiency, no communication): 2 replicas x 1 thread with {batch / 2} rows each = " +
                          $"t({batch} rows) / (2 t({batch / 2} rows)); 1 process x 2 threads = t(1 thread) / (2 t(2 threads))");
        Console.WriteLine();
        Console.WriteLine($"| H | recurrent weight MB | 2 replicas x {batch / 2} rows | 1 process x 2 threads |");
        Console.WriteLine("|---|---|---|---|");
        foreach (var line in ceilings) Console.WriteLine(line);

        // Why: the products of one time step. The two that carry the state (forward, and the state gradient in backward)
        // cannot be batched over time; each streams the whole recurrent weight matrix for its rows.
        Console.WriteLine();
        Console.WriteLine($"The matrix products of one time step, 1 thread, ms (G = {gates} gates): forward h·Wᵀ and the state gradient dG·W stream the [G·H x H] weights once per " +
                          $"step whatever the rows; autograd takes the weight gradient a step at a time (dGᵀ·h added into its sum), a backward through time written by hand could take it as one product over all {Steps} steps");
        Console.WriteLine();
        Console.WriteLine("| H | rows | forward h·Wᵀ | state gradient dG·W | weight gradient, per step (+ sum) | weight gradient, one product / steps | forward + state gradient, GFLOP/s |");
        Console.WriteLine("|---|---|---|---|---|---|---|");
        var splits = new List<string>();
        foreach (var h in hidden)
        {
            var carried = new Dictionary<int, double>();
            foreach (var r in rows)
            {
                var p = Products(gates, r, h, rounds);
                carried[r] = p.Forward + p.StateGradient;
                var gflops = 2 * 2.0 * r * gates * h * h / (carried[r] * 1e6);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {h} | {r} | {p.Forward:F3} | {p.StateGradient:F3} | {p.WeightGradient:F3} | {p.WeightGradientOnce:F3} | {gflops:F1} |"));
            }
            splits.Add(string.Create(CultureInfo.InvariantCulture, $"| {h} | {carried[batch] / (2 * carried[batch / 2]):F3} |"));
        }
        Console.WriteLine();
        Console.WriteLine($"What the two state-carrying products allow for 2 replicas x {batch / 2} rows (t({batch}) / (2 t({batch / 2}))):");
        Console.WriteLine();
        Console.WriteLine("| H | forward + state gradient |");
        Console.WriteLine("|---|---|");
        foreach (var line in splits) Console.WriteLine(line);
        return 0;
    }

    const string ChildVariable = "DTRAIN_BENCH_RECURRENT_CHILD";

    /// <summary>
    /// Runs the measurement again in a child process with dtrain's process settings (tcmalloc preloaded, no tiered
    /// compilation), as the cluster suite runs its single processes: the allocator alone moves these times by 20-40 %.
    /// </summary>
    static int InDtrainSettings(string[] args) => CollectiveBench.InDtrainSettings("recurrent", ChildVariable, args);

    static void Print(int h, double weightMb, int rows, int threads, double ms) =>
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {h} | {weightMb:F0} | {rows} | {threads} | {ms:F2} | {ms / rows:F3} |"));

    /// <summary>Milliseconds per forward + backward: the median over rounds of the mean over as many calls as fill ~0.5 s (at least 2).</summary>
    static double Measure(string cell, int rows, int h, int threads, int rounds)
    {
        set_num_threads(threads);
        random.manual_seed(1);
        // The engine's own recurrent module, one layer (libtorch's fused LSTM or GRU underneath).
        using var layer = new RecurrentStack(cell, h, h, layers: 1, dropout: 0, bidirectional: false);
        using var input = randn([rows, Steps, h], generator: new Generator(1)).requires_grad_();
        return Time(() =>
        {
            using var scope = NewDisposeScope();
            layer.zero_grad();
            input.grad?.zero_();
            var (output, state) = layer.Run(input, null);
            output.sum().backward();
            state.Dispose();
        }, rounds);
    }

    /// <summary>
    /// Milliseconds per time step, 1 thread, of the matrix products a recurrent layer's step is made of, with
    /// <paramref name="rows"/> rows and the [G·H × H] recurrent weights: forward h·Wᵀ, the backward product for the
    /// state gradient dG·W, the weight gradient dGᵀ·h added into its sum (how autograd takes it, a step at a time), and
    /// the same weight gradient as one product over all <see cref="Steps"/> time steps (what a hand-written backward
    /// through time could do instead), divided by the steps.
    /// </summary>
    static (double Forward, double StateGradient, double WeightGradient, double WeightGradientOnce) Products(int gates, int rows, int h, int rounds)
    {
        set_num_threads(1);
        var generator = new Generator(1);
        using var w = randn([gates * h, h], generator: generator);
        using var state = randn([rows, h], generator: generator);
        using var gateGradient = randn([rows, gates * h], generator: generator);
        using var sum = zeros([gates * h, h]);
        using var allGates = randn([Steps * rows, gates * h], generator: generator);
        using var allStates = randn([Steps * rows, h], generator: generator);
        double Op(Func<Tensor> op) => Time(() => { using var scope = NewDisposeScope(); op(); }, rounds);
        return (Op(() => state.matmul(w.t())), Op(() => gateGradient.matmul(w)), Op(() => sum.add_(gateGradient.t().matmul(state))),
            Op(() => allGates.t().matmul(allStates)) / Steps);
    }

    /// <summary>Milliseconds per call: the median over rounds of the mean over as many calls as fill ~0.5 s (at least 2).</summary>
    static double Time(Action call, int rounds)
    {
        var clock = Stopwatch.StartNew();
        var calls = 0;
        // Warm-up: the first calls pick kernels and fault the memory in; also how many calls fill a round.
        while (calls < 2 || clock.Elapsed.TotalSeconds < 0.2)
        {
            call();
            calls++;
        }
        var perRound = Math.Max(2, (int)(0.5 / (clock.Elapsed.TotalSeconds / calls)));
        var times = new List<double>();
        for (var round = 0; round < rounds; round++)
        {
            clock.Restart();
            for (var i = 0; i < perRound; i++) call();
            times.Add(clock.Elapsed.TotalMilliseconds / perRound);
        }
        return BenchArgs.Median(times);
    }
}
