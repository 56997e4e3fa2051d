using Dtrain.Data;
using Dtrain.Specs;

namespace Dtrain.Training;

/// <summary>
/// Language-model batches. "stream": the text is cut into B contiguous streams and step k reads columns
/// [kT, (k+1)T) of every stream, so the hidden state carries over (truncated BPTT). "random": every row is an
/// independent window at an offset drawn from (seed, epoch, step, row), so any split of rows gives the same data.
/// </summary>
public sealed class LanguageModelBatches : IBatchSource
{
    private readonly ITokenSequence tokens;
    private readonly int batchSize, seqLen;
    private readonly bool stream;
    private readonly long seed;
    private readonly long streamLength;

    public long StepsPerEpoch { get; }

    public LanguageModelBatches(int[] tokens, int batchSize, int seqLen, string sampling, long seed)
        : this(new ArrayTokenSequence(tokens), batchSize, seqLen, sampling, seed)
    {
    }

    /// <summary>Batches over <paramref name="tokens"/>: an array in memory or a prepared dataset's split, cut alike.</summary>
    public LanguageModelBatches(ITokenSequence tokens, int batchSize, int seqLen, string sampling, long seed)
    {
        this.tokens = tokens;
        this.batchSize = batchSize;
        this.seqLen = seqLen;
        this.seed = seed;
        stream = sampling == LmSamplingKinds.Stream;
        if (stream)
        {
            streamLength = (tokens.Length - 1) / batchSize;
            if (streamLength < 1)
                throw new ArgumentException($"$.training.batch_size: {batchSize} streams need at least {batchSize + 1} tokens, the text has {tokens.Length}");
            StepsPerEpoch = (streamLength + seqLen - 1) / seqLen;
        }
        else
        {
            if (tokens.Length < seqLen + 1)
                throw new ArgumentException($"$.training.seq_len: windows of {seqLen} tokens need at least {seqLen + 1} tokens, the text has {tokens.Length}");
            StepsPerEpoch = Math.Max(1, (tokens.Length - 1 + (long)batchSize * seqLen - 1) / ((long)batchSize * seqLen));
        }
    }

    public int RowsAt(StepPosition position) => batchSize;

    public BatchRows? GetRows(StepPosition position, int rowStart, int rowCount)
    {
        rowCount = Math.Min(rowCount, batchSize - rowStart);
        if (rowCount <= 0) return null;
        int width;
        Func<int, long> offsetOf;
        if (stream)
        {
            var col = position.StepInEpoch * seqLen;
            width = (int)Math.Min(seqLen, streamLength - col);
            offsetOf = row => (rowStart + row) * streamLength + col;
        }
        else
        {
            width = seqLen;
            var maxOffset = tokens.Length - seqLen - 1;
            offsetOf = row => SplitMix64.For(seed, position.Epoch, position.StepInEpoch, rowStart + row).NextLong(maxOffset + 1);
        }
        var x = new long[rowCount * width];
        var y = new long[rowCount * width];
        var window = new int[width + 1];
        for (var r = 0; r < rowCount; r++)
        {
            tokens.Read(offsetOf(r), window);
            for (var t = 0; t < width; t++)
            {
                x[r * width + t] = window[t];
                y[r * width + t] = window[t + 1];
            }
        }
        return new BatchRows(rowCount, width, x, y, null, (long)rowCount * width);
    }

    public long CountAt(StepPosition position, int rowStart, int rowCount)
    {
        rowCount = Math.Min(rowCount, batchSize - rowStart);
        if (rowCount <= 0) return 0;
        var width = stream ? (int)Math.Min(seqLen, streamLength - position.StepInEpoch * seqLen) : seqLen;
        return (long)rowCount * width;
    }

    /// <summary>Whether the hidden state should carry from the previous step of the same epoch.</summary>
    public bool CarriesState => stream;
}
