namespace Dtrain.Training;

/// <summary>
/// Validation results: mean loss (nats per token or per sample) and the task's own metrics. Any of them may be NaN or
/// infinite — an empty validation split gives NaN, a diverging model an infinite loss or perplexity — and must still
/// print, travel and be checkpointed (<see cref="TrainingCheckpoint"/> stores them as "NaN", "Infinity", "-Infinity").
/// </summary>
public sealed record EvalMetrics(double Loss, long Count, double? Accuracy = null, double? MacroF1 = null, double? Perplexity = null, double? BitsPerToken = null)
{
    public override string ToString()
    {
        if (Count == 0) return "no validation data (the validation split is empty): loss and metrics are undefined";
        var parts = new List<string> { $"loss {Format(Loss, "F4")}" };
        if (Accuracy is { } a) parts.Add($"accuracy {Format(a * 100, "F2")}%");
        if (MacroF1 is { } f) parts.Add($"macro-F1 {Format(f, "F4")}");
        if (Perplexity is { } p) parts.Add($"perplexity {Format(p, "F2")}");
        if (BitsPerToken is { } b) parts.Add($"bits/token {Format(b, "F3")}");
        var text = string.Join(", ", parts);
        double?[] all = [Loss, Accuracy, MacroF1, Perplexity, BitsPerToken];
        return all.All(v => v is null || double.IsFinite(v.Value)) ? text : text + " (not finite: the model diverged)";
    }

    /// <summary>A metric for people: fixed decimals (invariant culture), or "NaN", "inf", "-inf".</summary>
    public static string Format(double value, string format) => value switch
    {
        double.NaN => "NaN",
        double.PositiveInfinity => "inf",
        double.NegativeInfinity => "-inf",
        // A diverging model's loss can be finite and huge: 8.7e29, not 31 digits.
        _ when Math.Abs(value) >= 1e9 => value.ToString("E3", System.Globalization.CultureInfo.InvariantCulture),
        _ => value.ToString(format, System.Globalization.CultureInfo.InvariantCulture),
    };
}

/// <summary>Accuracy and macro-averaged F1 from predicted and true class ids.</summary>
public static class ClassificationMetrics
{
    public static (double Accuracy, double MacroF1) Compute(IReadOnlyList<long> predicted, IReadOnlyList<long> actual, int classes)
    {
        var (correct, tp, fp, fn) = Count(predicted, actual, classes);
        return FromCounts(correct, actual.Count, tp, fp, fn);
    }

    /// <summary>The correct predictions and each class's true positives, false positives and false negatives.</summary>
    public static (long Correct, long[] TruePositives, long[] FalsePositives, long[] FalseNegatives) Count(IReadOnlyList<long> predicted, IReadOnlyList<long> actual, int classes)
    {
        if (predicted.Count != actual.Count) throw new ArgumentException("predictions and labels differ in length");
        var tp = new long[classes];
        var fp = new long[classes];
        var fn = new long[classes];
        long correct = 0;
        for (var i = 0; i < actual.Count; i++)
        {
            if (predicted[i] == actual[i]) { correct++; tp[actual[i]]++; }
            else { fp[predicted[i]]++; fn[actual[i]]++; }
        }
        return (correct, tp, fp, fn);
    }

    /// <summary>Accuracy and macro-F1 from the counts of <see cref="Count"/> (summed over parts of a split: the same figures as the whole).</summary>
    public static (double Accuracy, double MacroF1) FromCounts(long correct, long total, long[] tp, long[] fp, long[] fn)
    {
        if (total == 0) return (0, 0);
        var classes = tp.Length;
        double f1Sum = 0;
        var present = 0;
        for (var c = 0; c < classes; c++)
        {
            // Classes absent from both predictions and labels say nothing about this split.
            if (tp[c] + fp[c] + fn[c] == 0) continue;
            present++;
            f1Sum += 2.0 * tp[c] / (2.0 * tp[c] + fp[c] + fn[c]);
        }
        return ((double)correct / total, present == 0 ? 0 : f1Sum / present);
    }
}
