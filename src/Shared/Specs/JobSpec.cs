using Dtrain.Training.Tasks;
namespace Dtrain.Specs;

/// <summary>One training job: everything needed to reproduce a run, locally or on the cluster.</summary>
public sealed record JobSpec
{
    public string Name { get; init; } = "job";
    /// <summary>"language_model" or "classification".</summary>
    public string Task { get; init; } = TaskKinds.LanguageModel;
    public DataSpec Data { get; init; } = new();
    public TokenizerSpec Tokenizer { get; init; } = new();
    public ModelSpec Model { get; init; } = new();
    public OptimizerSpec Optimizer { get; init; } = new();
    public ScheduleSpec Schedule { get; init; } = new();
    public TrainingSpec Training { get; init; } = new();
    /// <summary>How a cluster splits the work; absent = data parallelism over the workers a job is given.</summary>
    public ParallelismSpec? Parallelism { get; init; }
    /// <summary>Directory for checkpoints and logs; relative paths are relative to the spec file.</summary>
    public string? Output { get; init; }
}

/// <summary>Data × pipeline parallelism: D replicas of a model split into K pipeline stages.</summary>
public sealed record ParallelismSpec
{
    /// <summary>Data-parallel replicas D (0 = as many as the workers allow: workers / stages).</summary>
    public int Data { get; init; }
    public PipelineSpec? Pipeline { get; init; }
    /// <summary>
    /// All-reduce gradient buckets while earlier layers are still in backward: "auto" (on where it pays: a data-parallel
    /// language model with 2 or more layers on a host with a core to spare), "on" or "off" (<see cref="OverlapKinds"/>).
    /// Same results either way.
    /// </summary>
    public string Overlap { get; init; } = OverlapKinds.Auto;
    /// <summary>Gradients on the wire: "none" (fp32), "fp16" or "bf16" (16-bit values, summed in fp32; <see cref="CompressionKinds"/>).</summary>
    public string GradientCompression { get; init; } = CompressionKinds.None;
}

public static class OverlapKinds
{
    public const string Auto = "auto";
    public const string On = "on";
    public const string Off = "off";
    public static readonly string[] All = [Auto, On, Off];

    /// <summary>
    /// Whether this job's language model can overlap its all-reduce with backward: a language model (classifiers run
    /// packed sequences through the fused stack) with 2 or more layers (one layer leaves nothing earlier to overlap
    /// with), no pipeline (stages reduce their own gradients after their last backward), and overlap not "off".
    /// </summary>
    public static bool Possible(JobSpec spec) =>
        (spec.Parallelism?.Overlap ?? Auto) != Off && spec.Parallelism?.Pipeline is null && TrainingTasks.Find(spec.Task) is { SignalsLayerGradients: true } && spec.Model.Layers >= 2;

    /// <summary>
    /// Whether a replica overlaps: "on" where <see cref="Possible"/>; "auto" only when its host has a core to spare for
    /// the data plane beyond the torch threads of every worker of the job on it (<paramref name="spareCores"/> &gt; 0). The
    /// ring's sends, receives and additions need CPU: with every core running torch, overlapping them with backward
    /// only slows backward down (measured in docs/benchmarks.md). Replicas may decide differently: the buckets, and so
    /// the result, are the same either way.
    /// </summary>
    public static bool Enabled(JobSpec spec, int spareCores) =>
        Possible(spec) && ((spec.Parallelism?.Overlap ?? Auto) == On || spareCores > 0);
}

public static class CompressionKinds
{
    public const string None = "none";
    public const string Fp16 = "fp16";
    public const string Bf16 = "bf16";
    public static readonly string[] All = [None, Fp16, Bf16];
}

/// <summary>Model parallelism across layers: stages on different workers, micro-batches through them.</summary>
public sealed record PipelineSpec
{
    /// <summary>Pipeline stages K: stage 0 holds the embedding and the first layers, the last stage the last layers and the head.</summary>
    public int Stages { get; init; } = 2;
    /// <summary>Micro-batches M per optimizer step; must divide training.batch_size.</summary>
    public int Microbatches { get; init; } = 1;
    /// <summary>"gpipe" (all forwards, then all backwards) or "1f1b" (at most K micro-batches' activations in flight).</summary>
    public string Schedule { get; init; } = Distributed.Pipeline.PipelineSchedule.OneFOneBKind;
    /// <summary>"balanced" (layers split by parameter count) or inclusive layer ranges per stage, e.g. "0-1,2-4,5-7".</summary>
    public string Partition { get; init; } = "balanced";

    /// <summary>The explicit ranges of <see cref="Partition"/> as (first, count); null for "balanced"; throws <see cref="FormatException"/> when malformed.</summary>
    public IReadOnlyList<(int First, int Count)>? Ranges()
    {
        if (Partition == "balanced") return null;
        var ranges = new List<(int, int)>();
        foreach (var part in Partition.Split(','))
        {
            var bounds = part.Trim().Split('-');
            if (bounds.Length is < 1 or > 2 || !int.TryParse(bounds[0], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var first)
                || !int.TryParse(bounds[^1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var last) || last < first)
                throw new FormatException($"\"{part.Trim()}\" is not a layer range like \"2-4\" (first-last, inclusive) or a single layer");
            ranges.Add((first, last - first + 1));
        }
        return ranges;
    }
}

public static class TaskKinds
{
    public const string LanguageModel = "language_model";
    public const string Classification = "classification";
    public static readonly string[] All = [LanguageModel, Classification];
}

/// <summary>Where the examples come from and how they are split.</summary>
public sealed record DataSpec
{
    /// <summary>"text" (language modelling), "jsonl", "csv" (classification) or "synthetic".</summary>
    public string Format { get; init; } = DataFormats.Text;
    /// <summary>Training file; relative paths are relative to the spec file.</summary>
    public string? Train { get; init; }
    /// <summary>Optional separate validation file in the same format; otherwise split off the training data.</summary>
    public string? Validation { get; init; }
    /// <summary>
    /// A dataset made by <c>dtrain prepare</c> (docs/data.md): a directory on storage the coordinator and the workers share,
    /// or <c>s3://bucket/prefix</c>. Exclusive with <see cref="Train"/>, <see cref="Validation"/>, <see cref="Synthetic"/> and
    /// the reading options: the dataset holds the data already split and tokenized; workers read their rows themselves.
    /// </summary>
    public string? Dataset { get; init; }
    /// <summary>Share held out for validation: the last part of the text (language modelling) or a seeded random subset (classification).</summary>
    public double ValidationFraction { get; init; } = 0.05;
    public string TextField { get; init; } = "text";
    public string LabelField { get; init; } = "label";
    /// <summary>Longest record in characters; longer ones are handled by <see cref="Overlength"/>.</summary>
    public int MaxLength { get; init; } = 2000;
    /// <summary>"truncate", "skip" or "error" for records longer than <see cref="MaxLength"/>.</summary>
    public string Overlength { get; init; } = OverlengthPolicies.Truncate;
    /// <summary>"fail" stops at the first malformed record naming file and line; "skip" drops it and counts it in the report.</summary>
    public string OnError { get; init; } = ErrorPolicies.Fail;
    public SyntheticSpec? Synthetic { get; init; }
}

public static class DataFormats
{
    public const string Text = "text";
    public const string Jsonl = "jsonl";
    public const string Csv = "csv";
    public const string Synthetic = "synthetic";
    public static readonly string[] All = [Text, Jsonl, Csv, Synthetic];

    /// <summary>The format a file's extension names (.jsonl/.json, .csv, .txt/.text); null when it names none.</summary>
    public static string? OfExtension(string path) => Path.GetExtension(path).TrimStart('.').ToLowerInvariant() switch
    {
        "jsonl" or "json" => Jsonl,
        "csv" => Csv,
        "txt" or "text" => Text,
        _ => null,
    };
}

public static class OverlengthPolicies
{
    public const string Truncate = "truncate";
    public const string Skip = "skip";
    public const string Error = "error";
    public static readonly string[] All = [Truncate, Skip, Error];
}

public static class ErrorPolicies
{
    public const string Fail = "fail";
    public const string Skip = "skip";
    public static readonly string[] All = [Fail, Skip];
}

/// <summary>A generated long-range task: classify a sequence by the symbol at its start, <see cref="Distance"/> noise symbols earlier.</summary>
public sealed record SyntheticSpec
{
    /// <summary>"recall": the label is the first symbol; the rest is noise.</summary>
    public string Kind { get; init; } = "recall";
    public int Distance { get; init; } = 50;
    public int Classes { get; init; } = 4;
    public int Samples { get; init; } = 4000;
    public int Seed { get; init; } = 7;
}

public sealed record TokenizerSpec
{
    /// <summary>"char" or "word".</summary>
    public string Kind { get; init; } = TokenizerKinds.Char;
    /// <summary>Tokens seen fewer times than this in the training split map to &lt;unk&gt;.</summary>
    public int MinFrequency { get; init; } = 1;
    /// <summary>Keep only the most frequent tokens (0 = no limit).</summary>
    public int MaxVocab { get; init; }
    public bool Lowercase { get; init; }
}

public static class TokenizerKinds
{
    public const string Char = "char";
    public const string Word = "word";
    public static readonly string[] All = [Char, Word];
}

public sealed record ModelSpec
{
    /// <summary>"lstm", "gru" or "rnn" (plain tanh RNN, the baseline).</summary>
    public string Cell { get; init; } = CellKinds.Lstm;
    public int Layers { get; init; } = 2;
    public int EmbeddingDim { get; init; } = 64;
    public int HiddenSize { get; init; } = 256;
    /// <summary>Dropout between stacked layers and before the output layer.</summary>
    public double Dropout { get; init; }
    /// <summary>Classification only: read the sequence in both directions.</summary>
    public bool Bidirectional { get; init; }
    /// <summary>Initial bias of the memory gate (LSTM forget gate, GRU update gate); larger keeps information longer at the start of training. Ignored by "rnn".</summary>
    public double GateBias { get; init; } = 1.0;
}

public static class CellKinds
{
    public const string Lstm = "lstm";
    public const string Gru = "gru";
    public const string Rnn = "rnn";
    public static readonly string[] All = [Lstm, Gru, Rnn];
}

public sealed record OptimizerSpec
{
    /// <summary>"sgd", "adam" or "adamw".</summary>
    public string Kind { get; init; } = OptimizerKinds.Adam;
    public double Lr { get; init; } = 2e-3;
    /// <summary>SGD only.</summary>
    public double Momentum { get; init; }
    public double WeightDecay { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
}

public static class OptimizerKinds
{
    public const string Sgd = "sgd";
    public const string Adam = "adam";
    public const string AdamW = "adamw";
    public static readonly string[] All = [Sgd, Adam, AdamW];
}

public sealed record ScheduleSpec
{
    /// <summary>"constant", "step" or "cosine"; every kind can start with a linear warm-up.</summary>
    public string Kind { get; init; } = ScheduleKinds.Constant;
    public int WarmupSteps { get; init; }
    /// <summary>"step": multiply by <see cref="Gamma"/> every <see cref="StepSize"/> steps.</summary>
    public int StepSize { get; init; } = 1000;
    public double Gamma { get; init; } = 0.5;
    /// <summary>"cosine": the rate it decays to at the last step.</summary>
    public double MinLr { get; init; }
}

public static class ScheduleKinds
{
    public const string Constant = "constant";
    public const string Step = "step";
    public const string Cosine = "cosine";
    public static readonly string[] All = [Constant, Step, Cosine];
}

public sealed record TrainingSpec
{
    /// <summary>Global batch: sequences per optimizer step (split across workers in the cluster).</summary>
    public int BatchSize { get; init; } = 32;
    /// <summary>Language modelling: tokens per sequence chunk (truncated BPTT length).</summary>
    public int SeqLen { get; init; } = 64;
    /// <summary>Language modelling: "stream" carries the hidden state across consecutive chunks (truncated BPTT); "random" samples independent windows.</summary>
    public string LmSampling { get; init; } = LmSamplingKinds.Stream;
    public int Epochs { get; init; } = 1;
    /// <summary>Stop after this many optimizer steps (0 = run all epochs).</summary>
    public int MaxSteps { get; init; }
    /// <summary>Stop after this much wall-clock training time (0 = no limit).</summary>
    public double MaxMinutes { get; init; }
    /// <summary>Clip gradients to this global L2 norm (0 = off).</summary>
    public double ClipNorm { get; init; } = 1.0;
    /// <summary>A step whose loss or gradient is not finite is skipped (on every replica alike); this many skipped steps in a row fail the run.</summary>
    public int MaxNonfiniteSteps { get; init; } = 5;
    public int Seed { get; init; } = 1;
    /// <summary>Evaluate on the validation split every this many steps (0 = only at the end).</summary>
    public int EvalInterval { get; init; } = 200;
    /// <summary>Limit evaluation to this many batches (0 = the whole validation split).</summary>
    public int EvalBatches { get; init; }
    /// <summary>Save a checkpoint every this many steps (0 = only at the end).</summary>
    public int CheckpointInterval { get; init; } = 500;
    public int KeepCheckpoints { get; init; } = 3;
    /// <summary>Cluster jobs: how many times the job restarts by itself from its newest checkpoint when it cannot go on (a pipeline stage lost, too few workers for too long).</summary>
    public int MaxRestarts { get; init; }
    /// <summary>"cpu", "cuda" or "cuda:N"; CUDA falls back to CPU with a message when absent.</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>Intra-op torch threads (0 = all cores).</summary>
    public int Threads { get; init; }
}

public static class LmSamplingKinds
{
    public const string Stream = "stream";
    public const string Random = "random";
    public static readonly string[] All = [Stream, Random];
}
