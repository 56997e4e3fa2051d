using System.Globalization;
using Dtrain.Cli;
using Dtrain.Collective;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>
/// What 16-bit gradients cost in accuracy: the relative error of W1's reduced gradient (2 and 4 ranks, real W1
/// gradients on different batches) against the fp32 sum, and the validation loss of a short W1 run on Moby Dick
/// (2 workers x 1 thread) with gradient_compression none, fp16 and bf16.
/// </summary>
public static class CompressionBench
{
    /// <summary>
    /// The 16-bit codecs' speed: the vectorised WireCodec against its scalar reference (the implementation before it
    /// was vectorised, kept as the reference), encode / decode / decode-and-add of 4M floats, alternating, medians of
    /// <paramref name="rounds"/> rounds of ~1 GB of floats each.
    /// </summary>
    public static int Codec(int rounds)
    {
        const int n = 4 << 20;
        var random = new Random(1);
        var values = new float[n];
        for (var i = 0; i < n; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * MathF.Pow(10, random.Next(-6, 3));
        var words = new ushort[n];
        var sink = new float[n];
        var bytes = new byte[n * 2];
        Console.WriteLine($"WireCodec, {n} floats per call, GB/s of float32 values, median of {rounds} rounds (min-max); hardware vectors: {(System.Numerics.Vector.IsHardwareAccelerated ? $"{System.Numerics.Vector<float>.Count * 32} bits" : "none")}");
        Console.WriteLine("| codec | operation | scalar reference | vectorised | speed-up |");
        Console.WriteLine("|---|---|---|---|---|");
        foreach (var compression in new[] { RingCompression.Fp16, RingCompression.Bf16 })
        {
            WireCodec.EncodeScalar(compression, values, words);
            Buffer.BlockCopy(words, 0, bytes, 0, bytes.Length);
            var operations = new (string Name, Action Scalar, Action Vector)[]
            {
                ("encode", () => WireCodec.EncodeScalar(compression, values, words), () => WireCodec.EncodeInto(compression, values, words)),
                ("decode", () => WireCodec.DecodeScalar(compression, words, sink, add: false), () => WireCodec.Decode(compression, bytes, sink, add: false)),
                ("decode + add", () => WireCodec.DecodeScalar(compression, words, sink, add: true), () => WireCodec.Decode(compression, bytes, sink, add: true)),
            };
            foreach (var (name, scalar, vector) in operations)
            {
                double Rate(Action a)
                {
                    a();
                    var clock = System.Diagnostics.Stopwatch.StartNew();
                    var calls = 0;
                    while (calls < 64 && (calls < 4 || clock.Elapsed.TotalSeconds < 0.5)) { a(); calls++; }
                    return (double)calls * n * sizeof(float) / clock.Elapsed.TotalSeconds / 1e9;
                }
                var s = new List<double>();
                var v = new List<double>();
                for (var r = 0; r < rounds; r++)
                {
                    if (r % 2 == 0) { s.Add(Rate(scalar)); v.Add(Rate(vector)); }
                    else { v.Add(Rate(vector)); s.Add(Rate(scalar)); }
                    Array.Clear(sink);
                }
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {compression} | {name} | {BenchArgs.Median(s):F2} ({s.Min():F2}-{s.Max():F2}) | {BenchArgs.Median(v):F2} ({v.Min():F2}-{v.Max():F2}) | {BenchArgs.Median(v) / BenchArgs.Median(s):F1}x |"));
            }
        }
        return 0;
    }

    public static int Run(string root, int steps)
    {
        Codec(5);
        Console.WriteLine();
        Console.WriteLine("Reduced-gradient error, W1 (0.89 M values), sums over ranks of gradients on different random batches:");
        Console.WriteLine("| compression | ranks | relative error ||g16 - g32|| / ||g32|| | worst element error / (u * sum |g_r|) |");
        Console.WriteLine("|---|---|---|---|");
        foreach (var world in new[] { 2, 4 })
        {
            var grads = Enumerable.Range(0, world).Select(Gradient).ToArray();
            var exact = new double[grads[0].Length];
            var magnitude = new double[grads[0].Length];
            foreach (var g in grads)
                for (var i = 0; i < g.Length; i++)
                {
                    exact[i] += g[i];
                    magnitude[i] += Math.Abs(g[i]);
                }
            foreach (var compression in new[] { RingCompression.None, RingCompression.Fp16, RingCompression.Bf16 })
            {
                var buffers = grads.Select(g => (float[])g.Clone()).ToArray();
                var ring = InMemoryRingTransport.CreateRing(world);
                Task.WhenAll(ring.Select((t, rank) => new RingAllReduce(t).SumAsync(buffers[rank], 0, compression))).GetAwaiter().GetResult();
                var u = compression switch { RingCompression.Fp16 => Math.Pow(2, -11), RingCompression.Bf16 => Math.Pow(2, -8), _ => Math.Pow(2, -24) };
                double err2 = 0, ref2 = 0, worst = 0;
                for (var i = 0; i < exact.Length; i++)
                {
                    var e = buffers[0][i] - exact[i];
                    err2 += e * e;
                    ref2 += exact[i] * exact[i];
                    if (magnitude[i] > 0) worst = Math.Max(worst, Math.Abs(e) / (u * magnitude[i]));
                }
                Console.WriteLine($"| {compression} | {world} | {Math.Sqrt(err2 / ref2):E2} | {worst:F2} |");
            }
        }

        Console.WriteLine();
        var text = Path.Combine(root, "data", "moby-dick", "moby-dick.txt");
        var spec = new JobSpec
        {
            Name = "w1-moby",
            Data = new DataSpec { Format = DataFormats.Text, Train = text, ValidationFraction = 0.05 },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 2, EmbeddingDim = 64, HiddenSize = 256 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 2e-3 },
            Training = new TrainingSpec { BatchSize = 32, SeqLen = 64, LmSampling = LmSamplingKinds.Random, ClipNorm = 1.0, MaxSteps = steps, EvalInterval = steps, EvalBatches = 50, CheckpointInterval = 0, Seed = 1 },
        };
        Console.WriteLine($"W1 on Moby Dick, 2 workers x 1 thread, {steps} steps, validation loss (nats/char) on the last 5% after the last step:");
        Console.WriteLine("| gradient_compression | validation loss |");
        Console.WriteLine("|---|---|");
        using var tmp = new TempDir();
        foreach (var compression in CompressionKinds.All)
        {
            var path = Path.Combine(tmp.Path, $"{compression}.json");
            File.WriteAllText(path, JobSpecSerializer.Serialize(spec with { Parallelism = new ParallelismSpec { GradientCompression = compression } }));
            var logs = Path.Combine(tmp.Path, compression);
            using var cluster = LocalCluster.Start(2, 0, 1, logs, TimeSpan.FromMinutes(2));
            using var channel = Remote.Channel(cluster.Address);
            var client = new Jobs.JobsClient(channel);
            var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId;
            double loss = double.NaN;
            using (var call = client.Watch(new WatchJobRequest { JobId = id }))
                while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                    if (call.ResponseStream.Current.KindCase == JobEvent.KindOneofCase.Eval) loss = call.ResponseStream.Current.Eval.Metrics.Loss;
            Console.WriteLine($"| {compression} | {loss.ToString("F4", CultureInfo.InvariantCulture)} |");
        }
        return 0;
    }

    /// <summary>W1's flat gradient (summed loss) on random batch <paramref name="rank"/>, from the seeded initial weights.</summary>
    static float[] Gradient(int rank)
    {
        var spec = W1.Spec(64, 256, 2, 32, 64);
        using var engine = new TrainingEngine(spec, 96, 0, CPU);
        var source = W1.Batches(96, 32, 64);
        using var batch = source.Get(new StepPosition(0, rank), 0, 32)!;
        engine.ComputeGradients(batch, carryState: false);
        return [.. engine.Parameters.SelectMany(p => p.grad!.data<float>().ToArray())];
    }
}
