using Dtrain.Data;
using Dtrain.Models;
using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Training.Tasks;

/// <summary>
/// What a job's task decides, obtained once from the spec (<see cref="TrainingTasks.For(JobSpec)"/>) instead of comparing
/// its "task" name: how the data is read and encoded, the training batches, the model, its forward pass and loss, the
/// evaluation and its metrics, and the pieces of the memory estimate and of checkpoints that differ. Two tasks:
/// <see cref="LanguageModelTask"/> and <see cref="ClassificationTask"/>.
/// </summary>
public interface ITrainingTask
{
    /// <summary>The name users write in a spec's "task" (<see cref="TaskKinds"/>), and that travels in protos.</summary>
    string Kind { get; }

    /// <summary>Whether every record carries a label (data.label_field) that the model predicts; its label set is part of the model and of checkpoints.</summary>
    bool HasLabels { get; }

    /// <summary>The fewest labels a model of this task can be built with (in the training split, a checkpoint): 0 when it has none.</summary>
    int MinimumLabels { get; }

    /// <summary>
    /// Whether the model predicts the next token of one stream of text: it can generate, carries its hidden state from
    /// chunk to chunk (and in checkpoints), cannot be bidirectional, and data.max_length/overlength do not apply.
    /// </summary>
    bool PredictsNextToken { get; }

    /// <summary>Whether the model can signal, during backward, that a layer's gradients are final (so the all-reduce can overlap backward).</summary>
    bool SignalsLayerGradients { get; }

    /// <summary>What the loss is averaged over, for messages: "token" or "example".</summary>
    string Unit { get; }

    /// <summary>Whether records of <paramref name="format"/> (<see cref="DataFormats"/>) can be read for this task: plain text has no labels.</summary>
    bool Reads(string format);

    /// <summary>How records are read for this task: with labels and a length limit, or as text alone.</summary>
    ReadOptions ReadOptions(DataSpec data);

    /// <summary>
    /// Reads a job's training file (and validation file, when given) and splits them into training and validation
    /// records as the task needs (see <see cref="DatasetLoader"/>).
    /// </summary>
    LoadedDataset Read(JobSpec spec, string trainPath, string? validationPath, DataReadLimits limits, DataReportBuilder report, CancellationToken cancel);

    /// <summary>Encodes the loaded splits with <paramref name="tokenizer"/> (and the label set: <paramref name="labels"/>, or fitted on the training split).</summary>
    PreparedData Prepare(JobSpec spec, ITokenizer tokenizer, LabelSet? labels, LoadedDataset data);

    /// <summary>Encodes records to evaluate a trained model on: they become the validation split of the result (nothing is checked beyond the labels).</summary>
    PreparedData PrepareEvaluation(ITokenizer tokenizer, LabelSet labels, IReadOnlyList<TextRecord> records);

    /// <summary>How many training tokens (language model) or examples (classification) the data holds.</summary>
    long TrainExamples(PreparedData data);

    /// <summary>The longest encoded sequence of both splits, for the memory estimate; null when the task cuts its own windows (training.seq_len).</summary>
    int? LongestSequence(PreparedData data);

    /// <summary>The training batches of the job (see <see cref="IBatchSource"/>).</summary>
    IBatchSource TrainBatches(JobSpec spec, PreparedData data);

    /// <summary>
    /// Checks rows that arrived from elsewhere (a worker's shard of step <paramref name="what"/>, e.g. "step 12") before they
    /// become tensors: their shape, every token id within <paramref name="vocabSize"/> and every label id within
    /// <paramref name="labels"/> (an out-of-range id would abort libtorch); an <see cref="ArgumentException"/> says which.
    /// </summary>
    void CheckRows(BatchRows rows, int vocabSize, int labels, string what);

    /// <summary>Whether the training batches carry the hidden state from one step of an epoch to the next (stream sampling).</summary>
    bool CarriesState(JobSpec spec);

    /// <summary>The head's outputs: the vocabulary (language model) or one per class.</summary>
    int Outputs(int vocabSize, int classes);

    /// <summary>
    /// Builds the task's model with fresh weights from torch's generator (the caller seeds it; see <see cref="ModelFactory"/>).
    /// <paramref name="perLayer"/>: one module per recurrent layer where the task supports it.
    /// </summary>
    nn.Module CreateModel(ModelSpec model, int vocabSize, int classes, bool perLayer);

    /// <summary>
    /// The model's token embedding as <see cref="CreateModel"/> builds it (a classifier's keeps the padding id 0 at zero),
    /// with fresh weights from torch's generator: a pipeline's first stage builds the same one.
    /// </summary>
    TorchSharp.Modules.Embedding CreateEmbedding(int vocabSize, int dim);

    /// <summary>
    /// Runs <paramref name="model"/> (built by <see cref="CreateModel"/>) over <paramref name="batch"/>, moved to
    /// <paramref name="device"/>, from the hidden state <paramref name="state"/> (null: zeros), and sums its loss.
    /// </summary>
    TaskForward Forward(nn.Module model, Batch batch, Device device, RecurrentState? state);

    /// <summary>The predicted class per row of a forward pass's output (classification), for accuracy and F1; null when the task has none.</summary>
    long[]? Predictions(Tensor output);

    /// <summary>Sets the model's during-backward signal (see <see cref="TrainingEngine.GradientsReady"/>); nothing when the task has none.</summary>
    void SetGradientsReady(nn.Module model, Action<int>? ready);

    /// <summary>
    /// Evaluates <paramref name="engine"/>'s model on the validation split of <paramref name="data"/> (all of it, or the
    /// first <paramref name="maxBatches"/>); <paramref name="progress"/> is told the batches done after each one.
    /// </summary>
    EvalMetrics Evaluate(TrainingEngine engine, PreparedData data, int batchSize, int maxBatches, Action<long>? progress = null);

    /// <summary>
    /// Part <paramref name="part"/> of <see cref="Evaluate"/> (one rank's of a data-parallel job): its sums, which the
    /// parts' combine into the whole's (<see cref="EvalSums.Combine"/>).
    /// </summary>
    EvalSums EvaluatePart(TrainingEngine engine, PreparedData data, int batchSize, int maxBatches, EvalPart part, Action<long>? progress = null);

    /// <summary>The task's metrics that follow from the mean loss (perplexity and bits per token for a language model), added to <paramref name="metrics"/>.</summary>
    EvalMetrics WithDerivedMetrics(EvalMetrics metrics);

    /// <summary>The time steps one row of a batch holds, for the memory estimate: training.seq_len, or data.max_length.</summary>
    long ActivationLength(JobSpec spec);

    /// <summary>How many of the head's outputs one row of <paramref name="length"/> time steps produces: one per step, or one per row.</summary>
    long LogitsPerRow(long length);

    /// <summary>Names the length the activations were estimated for, for messages: "training.seq_len 64", "sequences of up to 80 tokens", "data.max_length 512".</summary>
    string DescribeLength(JobSpec spec, int? longestSequence);
}

/// <summary>One forward pass: the summed loss, the model's output (logits), and the hidden state after the batch (null when the task carries none).</summary>
public readonly record struct TaskForward(Tensor LossSum, Tensor Output, RecurrentState? State);
