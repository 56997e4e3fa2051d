using Dtrain.Data;

namespace Dtrain.Training;

/// <summary>
/// Classification batches: every epoch a seeded permutation of the examples (DistributedSampler semantics: each
/// example exactly once per epoch, the last batch may be short), padded with id 0 and sent with their lengths.
/// The examples are read through an <see cref="IRecordSource"/>: lists in memory or a prepared dataset's split, cut alike.
/// </summary>
public sealed class ClassificationBatches : IBatchSource
{
    private readonly IRecordSource records;
    private readonly int batchSize;
    private readonly long seed;
    private readonly bool shuffle;
    private readonly object gate = new();
    private long cachedEpoch = -1;
    private int[] order = [];

    public ClassificationBatches(IReadOnlyList<int[]> sequences, IReadOnlyList<int> labels, int batchSize, long seed, bool shuffle = true)
        : this(new ListRecordSource(sequences, labels), batchSize, seed, shuffle)
    {
    }

    public ClassificationBatches(IRecordSource records, int batchSize, long seed, bool shuffle = true)
    {
        this.records = records;
        this.batchSize = batchSize;
        this.seed = seed;
        this.shuffle = shuffle;
        StepsPerEpoch = Math.Max(1, (records.Count + batchSize - 1) / batchSize);
    }

    public long StepsPerEpoch { get; }

    public int RowsAt(StepPosition position) =>
        (int)Math.Min(batchSize, records.Count - position.StepInEpoch * batchSize);

    public long CountAt(StepPosition position, int rowStart, int rowCount) =>
        Math.Max(0, Math.Min(rowCount, RowsAt(position) - rowStart));

    public BatchRows? GetRows(StepPosition position, int rowStart, int rowCount)
    {
        var rows = RowsAt(position);
        rowCount = Math.Min(rowCount, rows - rowStart);
        if (rowCount <= 0) return null;
        var perm = Permutation(position.Epoch);
        var first = (int)(position.StepInEpoch * batchSize) + rowStart;
        var maxLen = 1;
        var sequences = new int[rowCount][];
        for (var r = 0; r < rowCount; r++)
        {
            sequences[r] = records.Tokens(perm[first + r]);
            maxLen = Math.Max(maxLen, sequences[r].Length);
        }
        var x = new long[rowCount * maxLen];
        var y = new long[rowCount];
        var lengths = new long[rowCount];
        for (var r = 0; r < rowCount; r++)
        {
            var seq = sequences[r];
            for (var t = 0; t < seq.Length; t++) x[r * maxLen + t] = seq[t];
            lengths[r] = Math.Max(1, seq.Length);
            y[r] = records.Label(perm[first + r]);
        }
        return new BatchRows(rowCount, maxLen, x, y, lengths, rowCount);
    }

    private int[] Permutation(long epoch)
    {
        // A worker reads the next step's rows on a background task while evaluation or a step may ask too.
        lock (gate)
        {
            if (epoch == cachedEpoch) return order;
            var p = Enumerable.Range(0, records.Count).ToArray();
            if (shuffle) SplitMix64.For(seed, epoch).Shuffle(p);
            cachedEpoch = epoch;
            order = p;
            return p;
        }
    }
}
