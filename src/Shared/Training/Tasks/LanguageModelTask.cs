using Dtrain.Data;
using Dtrain.Models;
using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Training.Tasks;

/// <summary>
/// Language modelling: the text is one stream of tokens, cut into training.seq_len chunks; the model predicts every next
/// token (loss per token) and carries its hidden state from chunk to chunk with stream sampling.
/// </summary>
public sealed class LanguageModelTask : ITrainingTask
{
    public string Kind => TaskKinds.LanguageModel;
    public bool HasLabels => false;
    public int MinimumLabels => 0;
    public bool PredictsNextToken => true;
    public bool SignalsLayerGradients => true;
    public string Unit => "token";

    public bool Reads(string format) => true;

    public ReadOptions ReadOptions(DataSpec data) => Data.ReadOptions.From(data, labels: false, limitLength: false);

    public LoadedDataset Read(JobSpec spec, string trainPath, string? validationPath, DataReadLimits limits, DataReportBuilder report, CancellationToken cancel)
    {
        var d = spec.Data;
        var options = ReadOptions(d);
        var trainRecords = DatasetReader.Read(trainPath, limits.Apply(options, trainPath), report, cancel);
        if (validationPath is not null)
        {
            var validationRecords = DatasetReader.Read(validationPath, limits.Apply(options, validationPath), report, cancel);
            return new LoadedDataset([DatasetLoader.Join(trainRecords)], [DatasetLoader.Join(validationRecords)], report.ToReport());
        }
        var (train, validation) = DatasetLoader.SplitText(trainRecords, d.Format, d.ValidationFraction);
        return new LoadedDataset([train], [validation], report.ToReport());
    }

    public PreparedData Prepare(JobSpec spec, ITokenizer tokenizer, LabelSet? labels, LoadedDataset data)
    {
        var train = tokenizer.Encode(string.Join('\n', data.Train.Select(r => r.Text)));
        var valid = tokenizer.Encode(string.Join('\n', data.Validation.Select(r => r.Text)));
        if (valid.Length < 2)
            throw new DataFormatException(data.Validation.FirstOrDefault()?.File ?? spec.Data.Train ?? "?", 0, $"the validation split has {valid.Length} token(s); raise data.validation_fraction or give a longer validation file");
        return new PreparedData { Tokenizer = tokenizer, Labels = LabelSet.Empty, TrainTokens = train, ValidationTokens = valid, Report = data.Report };
    }

    public PreparedData PrepareEvaluation(ITokenizer tokenizer, LabelSet labels, IReadOnlyList<TextRecord> records) =>
        new() { Tokenizer = tokenizer, Labels = LabelSet.Empty, ValidationTokens = tokenizer.Encode(string.Join('\n', records.Select(x => x.Text))) };

    public long TrainExamples(PreparedData data) => data.TrainStream.Length;

    public int? LongestSequence(PreparedData data) => null;

    public IBatchSource TrainBatches(JobSpec spec, PreparedData data) =>
        new LanguageModelBatches(data.TrainStream, spec.Training.BatchSize, spec.Training.SeqLen, spec.Training.LmSampling, spec.Training.Seed);

    public void CheckRows(BatchRows rows, int vocabSize, int labels, string what)
    {
        RowChecks.Shape(rows, rows.Inputs.LongLength, what);
        if (rows.Lengths is not null) throw new ArgumentException($"{what}: a language model's rows have no lengths");
        RowChecks.Tokens(rows.Inputs, vocabSize, $"{what} input");
        RowChecks.Tokens(rows.Targets, vocabSize, $"{what} target");
    }

    public bool CarriesState(JobSpec spec) => spec.Training.LmSampling == LmSamplingKinds.Stream;

    public int Outputs(int vocabSize, int classes) => vocabSize;

    public nn.Module CreateModel(ModelSpec model, int vocabSize, int classes, bool perLayer) => new RecurrentLanguageModel(model, vocabSize, perLayer);

    public TorchSharp.Modules.Embedding CreateEmbedding(int vocabSize, int dim) => nn.Embedding(vocabSize, dim);

    public TaskForward Forward(nn.Module model, Batch batch, Device device, RecurrentState? state)
    {
        var lm = Of(model);
        var inputs = batch.Inputs.to(device);
        var targets = batch.Targets.to(device);
        var (logits, next) = lm.Forward(inputs, state);
        var loss = nn.functional.cross_entropy(logits.reshape(-1, lm.VocabSize), targets.reshape(-1), reduction: nn.Reduction.Sum);
        return new TaskForward(loss, logits, next);
    }

    public long[]? Predictions(Tensor output) => null;

    public void SetGradientsReady(nn.Module model, Action<int>? ready) => Of(model).GradientsReady = ready;

    public EvalMetrics Evaluate(TrainingEngine engine, PreparedData data, int batchSize, int maxBatches, Action<long>? progress = null) =>
        Evaluator.LanguageModel(engine, data.ValidationStream, batchSize, engine.Spec.Training.SeqLen, maxBatches, progress);

    public EvalSums EvaluatePart(TrainingEngine engine, PreparedData data, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null) =>
        Evaluator.LanguageModel(engine, data.ValidationStream, batchSize, engine.Spec.Training.SeqLen, maxBatches, part, progress);

    public EvalMetrics WithDerivedMetrics(EvalMetrics metrics) =>
        metrics with { Perplexity = Math.Exp(metrics.Loss), BitsPerToken = metrics.Loss / Math.Log(2) };

    public long ActivationLength(JobSpec spec) => spec.Training.SeqLen;

    public long LogitsPerRow(long length) => length;

    public string DescribeLength(JobSpec spec, int? longestSequence) => $"training.seq_len {spec.Training.SeqLen}";

    private static RecurrentLanguageModel Of(nn.Module model) =>
        model as RecurrentLanguageModel ?? throw new ArgumentException($"a language-model task runs a {nameof(RecurrentLanguageModel)}, not a {model.GetType().Name}", nameof(model));
}
