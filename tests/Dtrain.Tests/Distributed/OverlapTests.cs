using Dtrain.Collective;
using Dtrain.Distributed;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Tests.Distributed;

/// <summary>
/// Overlap of the all-reduce with backward: buckets leave in reverse layer order while backward still runs, and the
/// replicas end bit-identical to replicas that reduce everything after backward. Replicas in one process over the
/// in-memory ring (the same RingAllReduce the workers run over gRPC); the process-level check is in
/// Cluster/OverlapClusterTests. No dropout here: replicas sharing a process share torch's generator.
/// </summary>
public class OverlapTests
{
    const int Vocab = 30;

    static JobSpec Spec(string overlap, string compression = CompressionKinds.None, string cell = CellKinds.Lstm) => new()
    {
        Model = new ModelSpec { Cell = cell, Layers = 3, EmbeddingDim = 16, HiddenSize = 64 },
        Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 1e-2 },
        Training = new TrainingSpec { BatchSize = 6, SeqLen = 10, ClipNorm = 1.0, Seed = 2 },
        Parallelism = new ParallelismSpec { Overlap = overlap, GradientCompression = compression },
    };

    /// <summary>Rank <paramref name="rank"/>'s rows of step <paramref name="step"/>: deterministic random tokens.</summary>
    static BatchRows Rows(int step, int rank, int rows = 3, int width = 10)
    {
        var rng = new Random(step * 31 + rank);
        var inputs = Enumerable.Range(0, rows * width).Select(_ => (long)rng.Next(Vocab)).ToArray();
        var targets = Enumerable.Range(0, rows * width).Select(_ => (long)rng.Next(Vocab)).ToArray();
        return new BatchRows(rows, width, inputs, targets, null, rows * width);
    }

    /// <summary>Records, for every SumAsync call, where its slice starts and whether the replica was still in backward.</summary>
    sealed class RecordingReducer(RingAllReduce ring) : IGradientReducer
    {
        public DataParallelReplica? Replica { get; set; }
        public List<(long Operation, int Length, bool InBackward)> Calls { get; } = [];
        public int WorldSize => ring.WorldSize;

        public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => SumAsync(buffer, operation, RingCompression.None, cancel);

        public Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancel)
        {
            lock (Calls) Calls.Add((operation, buffer.Length, Replica!.InBackward));
            return ring.SumAsync(buffer, operation, compression, cancel);
        }
    }

    static async Task<(List<float[]> Parameters, List<RecordingReducer> Reducers, List<DataParallelReplica> Replicas)> TrainAsync(JobSpec spec, int world, int steps)
    {
        var ring = InMemoryRingTransport.CreateRing(world);
        var reducers = ring.Select(t => new RecordingReducer(new RingAllReduce(t, operationTimeout: TimeSpan.FromMinutes(2)))).ToList();
        var replicas = reducers.Select(r =>
        {
            var replica = new DataParallelReplica(spec, Vocab, 0, CPU, r, bucketFloats: 20_000);
            r.Replica = replica;
            return replica;
        }).ToList();
        for (var step = 0; step < steps; step++)
        {
            var s = step;
            // Each replica on a thread of its own, as workers each run theirs.
            await Task.WhenAll(replicas.Select((replica, rank) => Task.Run(() =>
                replica.StepAsync(Rows(s, rank), resetState: false, carryState: false, globalCount: world * 30, lr: 1e-2, step: s, CancellationToken.None))));
        }
        var parameters = replicas.Select(r => r.Engine.Parameters.SelectMany(p => p.data<float>().ToArray()).ToArray()).ToList();
        return (parameters, reducers, replicas);
    }

    [Theory]
    [InlineData(CellKinds.Lstm)]
    [InlineData(CellKinds.Gru)]
    public async Task Overlap_on_and_off_end_with_bit_identical_parameters(string cell)
    {
        var (off, _, offReplicas) = await TrainAsync(Spec(OverlapKinds.Off, cell: cell), 3, 6);
        var (on, reducers, onReplicas) = await TrainAsync(Spec(OverlapKinds.On, cell: cell), 3, 6);
        try
        {
            Assert.False(offReplicas[0].Overlap);
            Assert.True(onReplicas[0].Overlap);
            Assert.True(onReplicas[0].Buckets.Count >= 3, $"{onReplicas[0].Buckets.Count} bucket(s)");
            for (var rank = 0; rank < 3; rank++)
            {
                Assert.Equal(off[0], off[rank]);
                Assert.Equal(off[0], on[rank]);   // element-wise exact float equality
            }
        }
        finally
        {
            foreach (var r in offReplicas.Concat(onReplicas)) r.Dispose();
        }
    }

    [Fact]
    public async Task Buckets_are_reduced_in_reverse_layer_order_while_backward_runs()
    {
        var (_, reducers, replicas) = await TrainAsync(Spec(OverlapKinds.On), 2, 2);
        try
        {
            var buckets = replicas[0].Buckets;
            // The plan: the last parameters first (head and top layer), the embedding and first layer when backward ends.
            Assert.Equal(GradientBucket.AfterBackward, buckets[^1].Point);
            for (var b = 1; b < buckets.Count; b++) Assert.True(buckets[b].Start < buckets[b - 1].Start);
            foreach (var reducer in reducers)
            {
                Assert.Equal(2 * buckets.Count, reducer.Calls.Count);
                for (var step = 0; step < 2; step++)
                {
                    var calls = reducer.Calls.Skip(step * buckets.Count).Take(buckets.Count).ToList();
                    // Started in bucket order (reverse layer order), each with its own operation id.
                    Assert.Equal(Enumerable.Range(0, buckets.Count).Select(b => (long)(step * buckets.Count + b)), calls.Select(c => c.Operation));
                    Assert.Equal(buckets.Select(b => b.Length), calls.Select(c => c.Length));
                    // Every bucket but the last left while backward was still running.
                    Assert.All(calls.SkipLast(1), c => Assert.True(c.InBackward, $"bucket operation {c.Operation} started after backward ended"));
                    Assert.False(calls[^1].InBackward);
                }
            }
        }
        finally
        {
            foreach (var r in replicas) r.Dispose();
        }
    }

    [Theory]
    [InlineData(CompressionKinds.Fp16)]
    [InlineData(CompressionKinds.Bf16)]
    public async Task Compressed_gradients_keep_replicas_bit_identical_and_close_to_fp32(string compression)
    {
        var (exact, _, a) = await TrainAsync(Spec(OverlapKinds.On), 3, 4);
        var (compressed, _, b) = await TrainAsync(Spec(OverlapKinds.On, compression), 3, 4);
        try
        {
            for (var rank = 1; rank < 3; rank++) Assert.Equal(compressed[0], compressed[rank]);
            // Adam normalises the step, so parameters after 4 steps stay within a small fraction of the lr of fp32's.
            var diff = exact[0].Zip(compressed[0], (x, y) => Math.Abs(x - y)).Max();
            Assert.True(diff > 0, "compression changed nothing: were the gradients really sent as 16-bit values?");
            Assert.True(diff < 4 * 1e-2, $"max |dp| {diff} after 4 steps");
        }
        finally
        {
            foreach (var r in a.Concat(b)) r.Dispose();
        }
    }
}
