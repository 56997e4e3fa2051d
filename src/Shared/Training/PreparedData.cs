using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Training;

/// <summary>A job's data after tokenization: token ids for language modelling, id sequences and label ids for classification.</summary>
public sealed class PreparedData
{
    public required ITokenizer Tokenizer { get; init; }
    /// <summary>Class names in id order (classification), empty for language modelling.</summary>
    public required LabelSet Labels { get; init; }
    public int[] TrainTokens { get; init; } = [];
    public int[] ValidationTokens { get; init; } = [];
    public IReadOnlyList<int[]> TrainSequences { get; init; } = [];
    public IReadOnlyList<int> TrainLabels { get; init; } = [];
    public IReadOnlyList<int[]> ValidationSequences { get; init; } = [];
    public IReadOnlyList<int> ValidationLabels { get; init; } = [];
    public DataReport Report { get; init; } = DataReport.Empty;

    /// <summary>The prepared dataset the splits are read from (data.dataset), or null when they are the arrays above.</summary>
    public StoredDataset? Dataset { get; init; }

    /// <summary>The training stream of a language model: <see cref="TrainTokens"/>, or the dataset's split.</summary>
    public ITokenSequence TrainStream { get => trainStream ??= new ArrayTokenSequence(TrainTokens); init => trainStream = value; }
    /// <summary>The validation stream of a language model: <see cref="ValidationTokens"/>, or the dataset's split.</summary>
    public ITokenSequence ValidationStream { get => validationStream ??= new ArrayTokenSequence(ValidationTokens); init => validationStream = value; }
    /// <summary>The training records of a classifier: <see cref="TrainSequences"/> and <see cref="TrainLabels"/>, or the dataset's split.</summary>
    public IRecordSource TrainRecords { get => trainRecords ??= new ListRecordSource(TrainSequences, TrainLabels); init => trainRecords = value; }
    /// <summary>The validation records of a classifier: <see cref="ValidationSequences"/> and <see cref="ValidationLabels"/>, or the dataset's split.</summary>
    public IRecordSource ValidationRecords { get => validationRecords ??= new ListRecordSource(ValidationSequences, ValidationLabels); init => validationRecords = value; }
    private ITokenSequence? trainStream, validationStream;
    private IRecordSource? trainRecords, validationRecords;

    /// <summary>
    /// The splits of an opened dataset, read through its shards (nothing is loaded). A resumed job's
    /// <paramref name="tokenizer"/> and <paramref name="labels"/> must be the dataset's: its ids are the model's.
    /// </summary>
    public static PreparedData FromDataset(StoredDataset dataset, ITokenizer? tokenizer = null, LabelSet? labels = null)
    {
        if (tokenizer is not null && !tokenizer.ToState().Tokens.SequenceEqual(dataset.Tokenizer.ToState().Tokens))
            throw new DataFormatException(dataset.Uri, 0, $"its vocabulary ({dataset.Tokenizer.VocabSize} tokens) is not the checkpoint's ({tokenizer.VocabSize} tokens): a resumed job must train on the ids its model was trained on");
        if (labels is not null && !labels.Names.SequenceEqual(dataset.Labels.Names))
            throw new DataFormatException(dataset.Uri, 0, $"its labels ({dataset.Labels.Describe()}) are not the checkpoint's ({labels.Describe()})");
        return new PreparedData
        {
            Tokenizer = dataset.Tokenizer, Labels = dataset.Labels, Dataset = dataset, Report = dataset.Manifest.Report,
            TrainStream = dataset.Train, ValidationStream = dataset.Validation, TrainRecords = dataset.Train, ValidationRecords = dataset.Validation,
        };
    }

    /// <summary>
    /// Loads the spec's data (under <paramref name="limits"/>, see <see cref="DatasetLoader"/>), fits the tokenizer and label
    /// set on the training split (or reuses those given, when resuming) and encodes everything as the spec's task does (<see cref="ITrainingTask.Prepare"/>); <paramref name="cancel"/>
    /// stops reading between chunks and records, and between these phases.
    /// </summary>
    public static PreparedData Load(JobSpec spec, string specDir, ITokenizer? tokenizer = null, LabelSet? labels = null, DataReadLimits? limits = null, CancellationToken cancel = default)
    {
        if (spec.Data.Dataset is { } uri)
        {
            var dataset = StoredDataset.OpenAsync(DatasetUri(uri, specDir), cancel: cancel).GetAwaiter().GetResult();
            try
            {
                DatasetSpecs.Check(spec, dataset.Manifest, spec.Name);
                return FromDataset(dataset, tokenizer, labels);
            }
            catch
            {
                dataset.Dispose();
                throw;
            }
        }
        var data = DatasetLoader.Load(spec, specDir, limits, cancel);
        cancel.ThrowIfCancellationRequested();
        if (tokenizer is null)
        {
            tokenizer = TokenizerFactory.Fit(spec.Tokenizer, data.Train.Select(r => r.Text));
            // <pad> and <unk> only: every token of the training split was left out (a model could not be built).
            if (tokenizer.VocabSize < 3)
                throw new SpecException(spec.Name, [new SpecError("$.tokenizer.min_frequency",
                    $"{spec.Tokenizer.MinFrequency} leaves no {spec.Tokenizer.Kind} token of the training data in the vocabulary (none occurs that often): lower it")]);
        }
        cancel.ThrowIfCancellationRequested();
        return TrainingTasks.For(spec).Prepare(spec, tokenizer, labels, data);
    }

    /// <summary>data.dataset as a store root: s3:// as given, a path resolved against the spec's directory.</summary>
    public static string DatasetUri(string dataset, string specDir) =>
        Data.Storage.S3Location.IsS3(dataset) || dataset.StartsWith("file://", StringComparison.OrdinalIgnoreCase) ? dataset : JobSpecPaths.Resolve(specDir, dataset)!;

    /// <summary>A text that yields no tokens (e.g. only whitespace for the word tokenizer) becomes one &lt;unk&gt;, so no sequence is empty.</summary>
    public static int[] EncodeNonEmpty(ITokenizer tokenizer, string text)
    {
        var ids = tokenizer.Encode(text);
        return ids.Length > 0 ? ids : [tokenizer.UnkId];
    }
}
