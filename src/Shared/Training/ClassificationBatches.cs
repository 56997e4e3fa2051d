using Dtrain.Data;

namespace Dtrain.Training;

/// <summary>
/// Classification batches: every epoch a seeded permutation of the examples (DistributedSampler semantics: each
/// example exactly once per epoch, the last batch may be short), padded with id 0 and sent with their lengths.
/// </summary>
public sealed class ClassificationBatches(IReadOnlyList<int[]> sequences, IReadOnlyList<int> labels, int batchSize, long seed, bool shuffle = true)
    : IBatchSource
{
    private long cachedEpoch = -1;
    private int[] order = [];

    public long StepsPerEpoch { get; } = Math.Max(1, (sequences.Count + batchSize - 1) / batchSize);

    public int RowsAt(StepPosition position) =>
        (int)Math.Min(batchSize, sequences.Count - position.StepInEpoch * batchSize);

    public BatchRows? GetRows(StepPosition position, int rowStart, int rowCount)
    {
        var rows = RowsAt(position);
        rowCount = Math.Min(rowCount, rows - rowStart);
        if (rowCount <= 0) return null;
        var perm = Permutation(position.Epoch);
        var first = (int)(position.StepInEpoch * batchSize) + rowStart;
        var maxLen = 1;
        for (var r = 0; r < rowCount; r++) maxLen = Math.Max(maxLen, sequences[perm[first + r]].Length);
        var x = new long[rowCount * maxLen];
        var y = new long[rowCount];
        var lengths = new long[rowCount];
        for (var r = 0; r < rowCount; r++)
        {
            var seq = sequences[perm[first + r]];
            for (var t = 0; t < seq.Length; t++) x[r * maxLen + t] = seq[t];
            lengths[r] = Math.Max(1, seq.Length);
            y[r] = labels[perm[first + r]];
        }
        return new BatchRows(rowCount, maxLen, x, y, lengths, rowCount);
    }

    private int[] Permutation(long epoch)
    {
        if (epoch == cachedEpoch) return order;
        var p = Enumerable.Range(0, sequences.Count).ToArray();
        if (shuffle) SplitMix64.For(seed, epoch).Shuffle(p);
        cachedEpoch = epoch;
        order = p;
        return p;
    }
}
