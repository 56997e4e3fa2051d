using Dtrain.Data;
using Dtrain.Models;
using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Training.Tasks;

/// <summary>
/// Classification: every record is a sequence with a label; the model predicts one label per sequence (loss per
/// example) from padded batches with their lengths, and is evaluated by accuracy and macro-F1.
/// </summary>
public sealed class ClassificationTask : ITrainingTask
{
    public string Kind => TaskKinds.Classification;
    public bool HasLabels => true;
    public int MinimumLabels => 2;
    public bool PredictsNextToken => false;
    // Packed sequences run through the fused recurrent stack: no point between layers to signal.
    public bool SignalsLayerGradients => false;
    public string Unit => "example";

    public bool Reads(string format) => format != DataFormats.Text;

    public ReadOptions ReadOptions(DataSpec data) => Data.ReadOptions.From(data, labels: true, limitLength: true);

    public LoadedDataset Read(JobSpec spec, string trainPath, string? validationPath, DataReadLimits limits, DataReportBuilder report, CancellationToken cancel)
    {
        var d = spec.Data;
        if (!Reads(d.Format))
            throw new ArgumentException("plain text has no labels; use jsonl or csv for classification", nameof(spec));
        var options = ReadOptions(d);
        var trainRecords = DatasetReader.Read(trainPath, limits.Apply(options, trainPath), report, cancel);
        if (validationPath is null)
        {
            var (train, validation) = DatasetLoader.SplitRecords(trainRecords, trainPath, d.ValidationFraction, spec.Training.Seed);
            return new LoadedDataset(train, validation, report.ToReport());
        }
        var validationRecords = DatasetReader.Read(validationPath, limits.Apply(options, validationPath), report, cancel);
        var known = new HashSet<string>(trainRecords.Select(r => r.Label!), StringComparer.Ordinal);
        var quote = limits.QuotesContentOf(trainPath) && limits.QuotesContentOf(validationPath);
        foreach (var r in validationRecords)
        {
            if (!known.Contains(r.Label!))
                throw new DataFormatException(r.File, r.Line, quote
                    ? $"label \"{r.Label}\" never occurs in the training data ({trainPath}), so the model cannot predict it; training labels: {LabelSet.FromTraining(known).Describe()}"
                    : $"the label (field '{d.LabelField}') never occurs in the training data ({trainPath}), so the model cannot predict it");
        }
        return new LoadedDataset(trainRecords, validationRecords, report.ToReport());
    }

    public PreparedData Prepare(JobSpec spec, ITokenizer tokenizer, LabelSet? labels, LoadedDataset data)
    {
        labels ??= LabelSet.FromTraining(data.Train.Select(r => r.Label ?? ""));
        if (labels.Count < MinimumLabels)
            throw new DataFormatException(data.Train.FirstOrDefault()?.File ?? "?", 0, $"classification needs at least {MinimumLabels} distinct labels in the training split, found {labels.Count}");
        return new PreparedData
        {
            Tokenizer = tokenizer,
            Labels = labels,
            TrainSequences = data.Train.Select(r => PreparedData.EncodeNonEmpty(tokenizer, r.Text)).ToArray(),
            TrainLabels = data.Train.Select(r => labels.IdOf(r.Label ?? "", r.File, r.Line)).ToArray(),
            ValidationSequences = data.Validation.Select(r => PreparedData.EncodeNonEmpty(tokenizer, r.Text)).ToArray(),
            ValidationLabels = data.Validation.Select(r => labels.IdOf(r.Label ?? "", r.File, r.Line)).ToArray(),
            Report = data.Report,
        };
    }

    public PreparedData PrepareEvaluation(ITokenizer tokenizer, LabelSet labels, IReadOnlyList<TextRecord> records) => new()
    {
        Tokenizer = tokenizer,
        Labels = labels,
        ValidationSequences = records.Select(x => PreparedData.EncodeNonEmpty(tokenizer, x.Text)).ToArray(),
        ValidationLabels = records.Select(x => labels.IdOf(x.Label ?? "", x.File, x.Line)).ToArray(),
    };

    public long TrainExamples(PreparedData data) => data.TrainRecords.Count;

    // A dataset's records are not read to find the longest (its index is the workers'): the estimate takes data.max_length.
    public int? LongestSequence(PreparedData data) => data.Dataset is not null ? null :
        data.TrainSequences.Concat(data.ValidationSequences).Select(x => x.Length).DefaultIfEmpty(1).Max();

    public IBatchSource TrainBatches(JobSpec spec, PreparedData data) =>
        new ClassificationBatches(data.TrainRecords, spec.Training.BatchSize, spec.Training.Seed);

    public void CheckRows(BatchRows rows, int vocabSize, int labels, string what)
    {
        RowChecks.Shape(rows, rows.Rows, what);
        RowChecks.Tokens(rows.Inputs, vocabSize, $"{what} input");
        var lengths = rows.Lengths ?? throw new ArgumentException($"{what}: a classifier's rows need their lengths");
        if (lengths.Length != rows.Rows) throw new ArgumentException($"{what}: {lengths.Length} lengths for {rows.Rows} rows");
        foreach (var l in lengths) if (l < 1 || l > rows.Width) throw new ArgumentException($"{what}: length {l} outside [1, {rows.Width}]");
        foreach (var t in rows.Targets) if (t < 0 || t >= labels) throw new ArgumentException($"{what}: label id {t} outside [0, {labels})");
    }

    public bool CarriesState(JobSpec spec) => false;

    public int Outputs(int vocabSize, int classes) => classes;

    public nn.Module CreateModel(ModelSpec model, int vocabSize, int classes, bool perLayer) => new RecurrentClassifier(model, vocabSize, classes);

    public TorchSharp.Modules.Embedding CreateEmbedding(int vocabSize, int dim) => nn.Embedding(vocabSize, dim, padding_idx: 0);

    public TaskForward Forward(nn.Module model, Batch batch, Device device, RecurrentState? state)
    {
        var clf = model as RecurrentClassifier
            ?? throw new ArgumentException($"a classification task runs a {nameof(RecurrentClassifier)}, not a {model.GetType().Name}", nameof(model));
        var inputs = batch.Inputs.to(device);
        var targets = batch.Targets.to(device);
        // The lengths stay where they are: packing reads them on the CPU.
        var output = clf.Forward(inputs, batch.Lengths!);
        return new TaskForward(nn.functional.cross_entropy(output, targets, reduction: nn.Reduction.Sum), output, null);
    }

    public long[]? Predictions(Tensor output) => output.argmax(1).cpu().data<long>().ToArray();

    public void SetGradientsReady(nn.Module model, Action<int>? ready) { }

    public EvalMetrics Evaluate(TrainingEngine engine, PreparedData data, int batchSize, int maxBatches, Action<long>? progress = null) =>
        Evaluator.Classification(engine, data.ValidationRecords, data.Labels.Count, batchSize, maxBatches, progress);

    public EvalSums EvaluatePart(TrainingEngine engine, PreparedData data, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null) =>
        Evaluator.Classification(engine, data.ValidationRecords, data.Labels.Count, batchSize, maxBatches, part, progress);

    public EvalMetrics WithDerivedMetrics(EvalMetrics metrics) => metrics;

    public long ActivationLength(JobSpec spec) => spec.Data.MaxLength;

    public long LogitsPerRow(long length) => 1;

    public string DescribeLength(JobSpec spec, int? longestSequence) =>
        longestSequence is { } l ? $"sequences of up to {l} tokens" : $"data.max_length {spec.Data.MaxLength}";
}
