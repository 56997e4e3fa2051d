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

    public static EvalMetrics LanguageModel(TrainingEngine engine, ITokenSequence tokens, int batchSize, int seqLen, int maxBatches, Action<long>? progress = null)
    {
        // Fewer streams for a short validation text, so it is still read in order with the state carried.
        var streams = (int)Math.Max(1, Math.Min(batchSize, (tokens.Length - 1) / Math.Max(1, seqLen)));
        var source = new LanguageModelBatches(tokens, streams, seqLen, Specs.LmSamplingKinds.Stream, seed: 0);
        RecurrentState? state = null;
        double lossSum = 0;
        long count = 0;
        var steps = maxBatches > 0 ? Math.Min(maxBatches, source.StepsPerEpoch) : source.StepsPerEpoch;
        try
        {
            for (long k = 0; k < steps; k++)
            {
                using var batch = source.Get(new StepPosition(0, k), 0, streams)!;
                lossSum += engine.Evaluate(batch, ref state).LossSum;
                count += batch.Count;
                progress?.Invoke(k + 1);
            }
        }
        finally
        {
            state?.Dispose();
        }
        var loss = count == 0 ? double.NaN : lossSum / count;
        return new EvalMetrics(loss, count, Perplexity: Math.Exp(loss), BitsPerToken: loss / Math.Log(2));
    }

    public static EvalMetrics Classification(TrainingEngine engine, IReadOnlyList<int[]> sequences, IReadOnlyList<int> labels, int classes, int batchSize, int maxBatches) =>
        Classification(engine, new ListRecordSource(sequences, labels), classes, batchSize, maxBatches);

    public static EvalMetrics Classification(TrainingEngine engine, IRecordSource records, int classes, int batchSize, int maxBatches, Action<long>? progress = null)
    {
        var source = new ClassificationBatches(records, batchSize, seed: 0, shuffle: false);
        var predicted = new List<long>();
        var actual = new List<long>();
        double lossSum = 0;
        RecurrentState? none = null;
        var steps = maxBatches > 0 ? Math.Min(maxBatches, source.StepsPerEpoch) : source.StepsPerEpoch;
        for (long k = 0; k < steps; k++)
        {
            var position = new StepPosition(0, k);
            using var batch = source.Get(position, 0, source.RowsAt(position));
            if (batch is null) break;
            var (loss, predictions) = engine.Evaluate(batch, ref none);
            lossSum += loss;
            predicted.AddRange(predictions!);
            var first = (int)(k * batchSize);
            for (var r = 0; r < batch.Rows; r++) actual.Add(records.Label(first + r));
            progress?.Invoke(k + 1);
        }
        var (accuracy, f1) = ClassificationMetrics.Compute(predicted, actual, classes);
        return new EvalMetrics(actual.Count == 0 ? double.NaN : lossSum / actual.Count, actual.Count, accuracy, f1);
    }
}
