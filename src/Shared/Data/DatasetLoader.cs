using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Data;

/// <summary>
/// Reads a job's data and splits it into training and validation records.
/// <list type="bullet">
/// <item>Language modelling: the text (a text file, or the text fields of a jsonl/csv file joined with "\n") becomes
/// one training record with its first (1 - validation_fraction) and one validation record with the rest, cut on a
/// character boundary (never inside a surrogate pair); with data.validation, that file is the validation text and
/// all of train is kept. max_length does not apply: the text is a stream cut into seq_len chunks later.</item>
/// <item>Classification (jsonl, csv, synthetic): a seeded shuffle (SplitMix64 seeded from training.seed) puts the
/// last ceil(validation_fraction * N) records into validation, both splits keeping file order; a validation record
/// whose label has no training example is moved back to training. With data.validation, that file is the validation
/// split and a label in it that never occurs in training is a <see cref="DataFormatException"/> at its line.</item>
/// </list>
/// Relative paths are resolved against <c>baseDir</c> (the spec file's directory). Files are read under
/// the given <see cref="DataReadLimits"/> (default <see cref="DataReadLimits.Local"/>): size limit, quoting policy, progress; reading
/// stops with <see cref="OperationCanceledException"/> when the cancellation token fires.
/// </summary>
public static class DatasetLoader
{
    public static LoadedDataset Load(JobSpec spec, string baseDir, DataReadLimits? limits = null, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(baseDir);
        limits ??= DataReadLimits.Local;
        var d = spec.Data;
        var report = new DataReportBuilder();

        if (d.Format == DataFormats.Synthetic)
        {
            var s = d.Synthetic ?? throw new ArgumentException("data.synthetic is required when data.format is \"synthetic\"", nameof(spec));
            if (s.Kind != "recall") throw new ArgumentException($"unknown synthetic task \"{s.Kind}\"; expected \"recall\"", nameof(spec));
            if (TrainingTasks.Find(spec.Task) is not { HasLabels: true }) throw new ArgumentException("the synthetic recall task is a classification task", nameof(spec));
            var generated = SyntheticTasks.Recall(s.Distance, s.Classes, s.Samples, s.Seed);
            report.CountRead(generated.Count);
            var (train, validation) = SplitRecords(generated, SyntheticTasks.RecallFile, d.ValidationFraction, spec.Training.Seed);
            return new LoadedDataset(train, validation, report.ToReport());
        }

        var trainPath = JobSpecPaths.Resolve(baseDir, d.Train)
            ?? throw new ArgumentException($"data.train is required for format \"{d.Format}\"", nameof(spec));
        var validationPath = JobSpecPaths.Resolve(baseDir, d.Validation);

        return TrainingTasks.For(spec).Read(spec, trainPath, validationPath, limits, report, cancel);
    }

    /// <summary>
    /// Seeded split for classification: shuffle the indices, take the last ceil(fraction * N) as validation, keep file order
    /// within each split, and move back to training any validation record whose label does not occur in training.
    /// </summary>
    public static (IReadOnlyList<TextRecord> Train, IReadOnlyList<TextRecord> Validation) SplitRecords(
        IReadOnlyList<TextRecord> records, string file, double validationFraction, int seed)
    {
        ArgumentNullException.ThrowIfNull(records);
        CheckFraction(validationFraction);
        var n = records.Count;
        if (n < 2)
            throw new DataFormatException(file, 0, $"{n} record(s) cannot be split into training and validation; give more data or a separate data.validation file");
        var validationCount = Math.Clamp((int)Math.Ceiling(validationFraction * n - 1e-9), 1, n - 1);
        var order = Enumerable.Range(0, n).ToArray();
        new SplitMix64(0x73_706C_6974UL ^ (ulong)(long)seed).Shuffle(order); // "split"
        var inValidation = new bool[n];
        foreach (var i in order.AsSpan(n - validationCount)) inValidation[i] = true;

        var trainLabels = new HashSet<string?>(StringComparer.Ordinal);
        for (var i = 0; i < n; i++) if (!inValidation[i]) trainLabels.Add(records[i].Label);
        for (var i = 0; i < n; i++)
        {
            if (inValidation[i] && !trainLabels.Contains(records[i].Label))
            {
                inValidation[i] = false; // the only examples of a label must be learnable
                trainLabels.Add(records[i].Label);
            }
        }
        var train = new List<TextRecord>(n - validationCount);
        var validation = new List<TextRecord>(validationCount);
        for (var i = 0; i < n; i++) (inValidation[i] ? validation : train).Add(records[i]);
        return (train, validation);
    }

    /// <summary>Language modelling: the joined text cut into a leading training part and a trailing validation part.</summary>
    internal static (TextRecord Train, TextRecord Validation) SplitText(IReadOnlyList<TextRecord> records, string format, double validationFraction)
    {
        CheckFraction(validationFraction);
        var joined = Join(records);
        var text = joined.Text;
        var validationLength = Math.Clamp((int)Math.Ceiling(validationFraction * text.Length - 1e-9), 1, Math.Max(1, text.Length - 1));
        var cut = text.Length - validationLength;
        if (cut > 0 && char.IsLowSurrogate(text[cut]) && char.IsHighSurrogate(text[cut - 1])) cut--;
        if (cut <= 0)
            throw new DataFormatException(joined.File, 0, $"the text is {text.Length} character(s) long, too short to split into training and validation");
        return (joined with { Text = text[..cut] }, new TextRecord(text[cut..], null, joined.File, LineAt(records, format, cut)));
    }

    /// <summary>The line in the source file where character <paramref name="offset"/> of the joined text comes from.</summary>
    static int LineAt(IReadOnlyList<TextRecord> records, string format, int offset)
    {
        var start = 0;
        for (var k = 0; k < records.Count; k++)
        {
            var r = records[k];
            var end = start + r.Text.Length;
            if (offset < end || k == records.Count - 1)
            {
                if (format != DataFormats.Text) return r.Line;
                var local = Math.Clamp(offset - start, 0, r.Text.Length);
                return r.Line + r.Text.AsSpan(0, local).Count('\n');
            }
            start = end + 1; // the "\n" joining records
        }
        return 1;
    }

    internal static TextRecord Join(IReadOnlyList<TextRecord> records) =>
        records.Count == 1 ? records[0] with { Label = null }
        : new TextRecord(string.Join('\n', records.Select(r => r.Text)), null, records[0].File, records[0].Line);

    static void CheckFraction(double fraction)
    {
        if (!(fraction > 0 && fraction < 1))
            throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "validation_fraction must be in (0, 1) when no validation file is given");
    }
}
