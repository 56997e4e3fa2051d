using Dtrain.Data;
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

    /// <summary>
    /// Loads the spec's data (under <paramref name="limits"/>, see <see cref="DatasetLoader"/>), fits the tokenizer and label
    /// set on the training split (or reuses those given, when resuming) and encodes everything as the spec's task does (<see cref="ITrainingTask.Prepare"/>); <paramref name="cancel"/>
    /// stops reading between chunks and records, and between these phases.
    /// </summary>
    public static PreparedData Load(JobSpec spec, string specDir, ITokenizer? tokenizer = null, LabelSet? labels = null, DataReadLimits? limits = null, CancellationToken cancel = default)
    {
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

    /// <summary>A text that yields no tokens (e.g. only whitespace for the word tokenizer) becomes one &lt;unk&gt;, so no sequence is empty.</summary>
    public static int[] EncodeNonEmpty(ITokenizer tokenizer, string text)
    {
        var ids = tokenizer.Encode(text);
        return ids.Length > 0 ? ids : [tokenizer.UnkId];
    }
}
