using Dtrain.Models;

namespace Dtrain.Training;

/// <summary>
/// Runs the model over a validation split (all of it, or the first <c>maxBatches</c>) and computes the task's metrics;
/// <c>progress</c>, when given, is told the batches done after each one (a worker reports them to the coordinator, which
/// bounds an evaluation by its progress, not by the clock).
/// </summary>
public static class Evaluator
{
    public static EvalMetrics LanguageModel(TrainingEngine engine, int[] tokens, int batchSize, int seqLen, int maxBatches) =>
        LanguageModel(engine, new ArrayTokenSequence(tokens), batchSize, seqLen, maxBatches);

    public static EvalMetrics LanguageModel(TrainingEngine engine, ITokenSequence tokens, int batchSize, int seqLen, int maxBatches, Action<long>? progress = null) =>
        LanguageModel(engine, tokens, batchSize, seqLen, maxBatches, EvalPart.Whole, progress).ToMetrics();

    /// <summary>
    /// Part <paramref name="part"/> of a language model's evaluation: the split is read as up to
    /// <paramref name="batchSize"/> parallel contiguous streams with the recurrent state carried; this part reads its
    /// contiguous range of the streams, so the parts' sums add up to the whole's.
    /// </summary>
    public static EvalSums LanguageModel(TrainingEngine engine, ITokenSequence tokens, int batchSize, int seqLen, int maxBatches, EvalPart part, Action<long>? progress = null)
    {
        var streams = Streams(tokens.Length, batchSize, seqLen);
        var (first, rows) = part.Of(streams);
        if (rows == 0) return new EvalSums(0, 0);
        var source = new LanguageModelBatches(tokens, streams, seqLen, Specs.LmSamplingKinds.Stream, seed: 0);
        RecurrentState? state = null;
        double lossSum = 0;
        long count = 0;
        var steps = maxBatches > 0 ? Math.Min(maxBatches, source.StepsPerEpoch) : source.StepsPerEpoch;
        try
        {
            for (long k = 0; k < steps; k++)
            {
                using var batch = source.Get(new StepPosition(0, k), (int)first, (int)rows)!;
                lossSum += engine.Evaluate(batch, ref state).LossSum;
                count += batch.Count;
                progress?.Invoke(k + 1);
            }
        }
        finally
        {
            state?.Dispose();
        }
        return new EvalSums(lossSum, count);
    }

    /// <summary>Fewer streams than <paramref name="batchSize"/> for a short validation text, so it is still read in order with the state carried.</summary>
    private static int Streams(long length, int batchSize, int seqLen) => (int)Math.Max(1, Math.Min(batchSize, (length - 1) / Math.Max(1, seqLen)));

    /// <summary>
    /// The tokens [Start, End) of a language model's validation split of <paramref name="length"/> tokens that part
    /// <paramref name="part"/> of its evaluation reads (<see cref="LanguageModel(TrainingEngine, ITokenSequence, int, int, int, EvalPart, Action{long}?)"/>):
    /// from the start of its first stream to the last token its last stream reads (the target of its last column).
    /// A part with no stream reads nothing ([0, 0)); a split too short to evaluate is read whole.
    /// </summary>
    public static (long Start, long End) LanguageModelRange(long length, int batchSize, int seqLen, int maxBatches, EvalPart part)
    {
        if (length < 2 || seqLen < 1 || batchSize < 1) return (0, length);
        var streams = Streams(length, batchSize, seqLen);
        var (first, rows) = part.Of(streams);
        if (rows == 0) return (0, 0);
        var streamLength = (length - 1) / streams;
        var steps = (streamLength + seqLen - 1) / seqLen;
        if (maxBatches > 0) steps = Math.Min(steps, maxBatches);
        var columns = Math.Min(streamLength, steps * seqLen);
        return (first * streamLength, (first + rows - 1) * streamLength + columns + 1);
    }

    /// <summary>
    /// The records [Start, End) of a classifier's validation split of <paramref name="count"/> records that part
    /// <paramref name="part"/> of its evaluation reads (<see cref="Classification(TrainingEngine, IRecordSource, int, int, int, EvalPart, Action{long}?)"/>): its batches' rows.
    /// </summary>
    public static (int Start, int End) ClassificationRange(int count, int batchSize, int maxBatches, EvalPart part)
    {
        if (batchSize < 1) return (0, count);
        var steps = Math.Max(1, ((long)count + batchSize - 1) / batchSize);
        if (maxBatches > 0) steps = Math.Min(steps, maxBatches);
        var (first, length) = part.Of(steps);
        return ((int)Math.Min(count, first * batchSize), (int)Math.Min(count, (first + length) * batchSize));
    }

    public static EvalMetrics Classification(TrainingEngine engine, IReadOnlyList<int[]> sequences, IReadOnlyList<int> labels, int classes, int batchSize, int maxBatches) =>
        Classification(engine, new ListRecordSource(sequences, labels), classes, batchSize, maxBatches);

    public static EvalMetrics Classification(TrainingEngine engine, IRecordSource records, int classes, int batchSize, int maxBatches, Action<long>? progress = null) =>
        Classification(engine, records, classes, batchSize, maxBatches, EvalPart.Whole, progress).ToMetrics();

    /// <summary>
    /// Part <paramref name="part"/> of a classifier's evaluation: the batches evaluated (all, or the first
    /// <paramref name="maxBatches"/>) in order, this part a contiguous range of them — each batch the same rows as in
    /// one process, so the predictions are too and the parts' counts add up to the whole's.
    /// </summary>
    public static EvalSums Classification(TrainingEngine engine, IRecordSource records, int classes, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null)
    {
        var source = new ClassificationBatches(records, batchSize, seed: 0, shuffle: false);
        var predicted = new List<long>();
        var actual = new List<long>();
        double lossSum = 0;
        RecurrentState? none = null;
        var steps = maxBatches > 0 ? Math.Min(maxBatches, source.StepsPerEpoch) : source.StepsPerEpoch;
        var (first, length) = part.Of(steps);
        for (var k = first; k < first + length; k++)
        {
            var position = new StepPosition(0, k);
            using var batch = source.Get(position, 0, source.RowsAt(position));
            if (batch is null) break;
            var (loss, predictions) = engine.Evaluate(batch, ref none);
            lossSum += loss;
            predicted.AddRange(predictions!);
            var row = (int)(k * batchSize);
            for (var r = 0; r < batch.Rows; r++) actual.Add(records.Label(row + r));
            progress?.Invoke(k - first + 1);
        }
        var (correct, tp, fp, fn) = ClassificationMetrics.Count(predicted, actual, classes);
        return new EvalSums(lossSum, actual.Count, correct, tp, fp, fn);
    }
}
