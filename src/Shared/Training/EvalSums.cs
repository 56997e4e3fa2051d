namespace Dtrain.Training;

/// <summary>
/// Part <see cref="Index"/> of <see cref="Count"/> of a validation split, as one rank of a data-parallel job evaluates
/// it (as a DistributedSampler over the validation set): a language model's contiguous range of its parallel streams
/// (each with its recurrent state carried), a classifier's contiguous range of its batches.
/// </summary>
public readonly record struct EvalPart(int Index, int Count)
{
    public static readonly EvalPart Whole = new(0, 1);

    /// <summary>This part's [start, start + length) of <paramref name="total"/> items: contiguous, the parts' lengths differ by at most one.</summary>
    public (long Start, long Length) Of(long total)
    {
        if (Count < 1 || Index < 0 || Index >= Count) throw new ArgumentException($"evaluation part {Index} of {Count} is not a part");
        var start = total * Index / Count;
        return (start, total * (Index + 1) / Count - start);
    }
}

/// <summary>
/// What an evaluation adds up — the loss sum, the count it is over, and a classifier's per-class true positives, false
/// positives and false negatives — so the parts evaluated by several ranks combine into the metrics of one process
/// evaluating the whole split: the mean loss up to float summation order, accuracy and macro-F1 exactly.
/// </summary>
public sealed record EvalSums(double LossSum, long Count, long Correct = 0, long[]? TruePositives = null, long[]? FalsePositives = null, long[]? FalseNegatives = null)
{
    public bool Classification => TruePositives is not null;

    public static EvalSums Combine(IReadOnlyList<EvalSums> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("no evaluation parts to combine");
        var classes = parts[0].TruePositives?.Length;
        if (parts.Any(p => p.TruePositives?.Length != classes || p.FalsePositives?.Length != classes || p.FalseNegatives?.Length != classes))
            throw new ArgumentException("evaluation parts of different tasks or numbers of classes");
        long[]? Sum(Func<EvalSums, long[]?> of) =>
            classes is not { } n ? null : [.. Enumerable.Range(0, n).Select(c => parts.Sum(p => of(p)![c]))];
        return new EvalSums(parts.Sum(p => p.LossSum), parts.Sum(p => p.Count), parts.Sum(p => p.Correct),
            Sum(p => p.TruePositives), Sum(p => p.FalsePositives), Sum(p => p.FalseNegatives));
    }

    /// <summary>The mean loss and the task's metrics (perplexity and bits per token, or accuracy and macro-F1).</summary>
    public EvalMetrics ToMetrics()
    {
        var loss = Count == 0 ? double.NaN : LossSum / Count;
        if (!Classification) return new EvalMetrics(loss, Count, Perplexity: Math.Exp(loss), BitsPerToken: loss / Math.Log(2));
        var (accuracy, f1) = ClassificationMetrics.FromCounts(Correct, Count, TruePositives!, FalsePositives!, FalseNegatives!);
        return new EvalMetrics(loss, Count, accuracy, f1);
    }
}
