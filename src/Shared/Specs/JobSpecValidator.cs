using System.Text.RegularExpressions;
using Dtrain.Training.Tasks;

namespace Dtrain.Specs;

/// <summary>Semantic checks on a parsed spec: every value in range and every combination meaningful, before anything reaches torch.</summary>
public static partial class JobSpecValidator
{
    /// <summary>Upper bounds that keep user input from asking libtorch for absurd shapes.</summary>
    public const int MaxLayers = 16, MaxWidth = 8192, MaxBatch = 65536, MaxSeqLen = 100_000, MaxLengthLimit = 1_000_000;

    /// <summary>
    /// data.dataset: the dataset holds the data already read, split and tokenized by <c>dtrain prepare</c>, so the fields
    /// that say how to read and split files are refused with it, naming each; the task and tokenizer are checked against
    /// the dataset's when it is opened (<see cref="Data.Datasets.DatasetSpecs"/>).
    /// </summary>
    private static void DatasetRules(List<SpecError> e, JobSpec spec)
    {
        var d = spec.Data;
        var defaults = new DataSpec();
        if (string.IsNullOrWhiteSpace(d.Dataset)) e.Add(new("$.data.dataset", "must not be empty: a directory made by `dtrain prepare` on storage the workers share, or s3://bucket/prefix"));
        void NotWith(string field, bool given, string why)
        {
            if (given) e.Add(new($"$.data.{field}", $"not read with data.dataset ({why}): remove it"));
        }
        NotWith("train", d.Train is not null, "the dataset holds the training split");
        NotWith("validation", d.Validation is not null, "the dataset holds the validation split");
        NotWith("synthetic", d.Synthetic is not null, "the dataset holds the data");
        NotWith("format", d.Format != defaults.Format, "dtrain prepare read the files: its --format");
        NotWith("validation_fraction", d.ValidationFraction != defaults.ValidationFraction, "dtrain prepare split the data: its --validation-fraction");
        NotWith("text_field", d.TextField != defaults.TextField, "dtrain prepare read the files: its --text-field");
        NotWith("label_field", d.LabelField != defaults.LabelField, "dtrain prepare read the files: its --label-field");
        NotWith("max_length", d.MaxLength != defaults.MaxLength, "dtrain prepare cut the records: its --max-length");
        NotWith("overlength", d.Overlength != defaults.Overlength, "dtrain prepare cut the records: its --overlength");
        NotWith("on_error", d.OnError != defaults.OnError, "dtrain prepare read the files: its --on-error");
    }

    public static IReadOnlyList<SpecError> Validate(JobSpec spec)
    {
        var e = new List<SpecError>();
        if (string.IsNullOrWhiteSpace(spec.Name) || !NamePattern().IsMatch(spec.Name))
            e.Add(new("$.name", $"\"{spec.Name}\" must be 1-64 characters of letters, digits, '.', '_' or '-'"));
        OneOf(e, "$.task", spec.Task, TaskKinds.All);
        var task = TrainingTasks.Find(spec.Task);

        var d = spec.Data;
        OneOf(e, "$.data.format", d.Format, DataFormats.All);
        OneOf(e, "$.data.overlength", d.Overlength, OverlengthPolicies.All);
        OneOf(e, "$.data.on_error", d.OnError, ErrorPolicies.All);
        if (d.Dataset is not null) DatasetRules(e, spec);
        else
        {
            if (d.Format == DataFormats.Synthetic)
            {
                if (d.Synthetic is null) e.Add(new("$.data.synthetic", "required when format is \"synthetic\""));
                else
                {
                    OneOf(e, "$.data.synthetic.kind", d.Synthetic.Kind, ["recall"]);
                    Range(e, "$.data.synthetic.distance", d.Synthetic.Distance, 1, MaxSeqLen);
                    Range(e, "$.data.synthetic.classes", d.Synthetic.Classes, 2, 26);
                    Range(e, "$.data.synthetic.samples", d.Synthetic.Samples, 10, 10_000_000);
                }
                if (task is not { HasLabels: true }) e.Add(new("$.task", "the synthetic recall task is a classification task; set task to \"classification\""));
                if (d.Train is not null) e.Add(new("$.data.train", "not read when format is \"synthetic\" (the data is generated): remove it"));
                if (d.Validation is not null) e.Add(new("$.data.validation", "not read when format is \"synthetic\" (the data is generated): remove it"));
            }
            else
            {
                if (string.IsNullOrWhiteSpace(d.Train)) e.Add(new("$.data.train", $"required for format \"{d.Format}\": the path of the training file"));
                if (d.Synthetic is not null) e.Add(new("$.data.synthetic", "only allowed when format is \"synthetic\""));
            }
            if (d.Format == DataFormats.Text && task?.Reads(DataFormats.Text) != true)
                e.Add(new("$.data.format", "\"text\" has no labels: it is for task \"language_model\"; use \"jsonl\" or \"csv\" for classification"));
            if (d.Validation is null && (d.ValidationFraction <= 0 || d.ValidationFraction >= 1 || double.IsNaN(d.ValidationFraction)))
                e.Add(new("$.data.validation_fraction", $"{d.ValidationFraction} must be in (0, 1) when no validation file is given"));
            if (string.IsNullOrEmpty(d.TextField)) e.Add(new("$.data.text_field", "must not be empty"));
            if (task is { HasLabels: true } && string.IsNullOrEmpty(d.LabelField)) e.Add(new("$.data.label_field", "must not be empty for classification"));
            Range(e, "$.data.max_length", d.MaxLength, 1, MaxLengthLimit);
            // A language model reads its text as one stream cut into training.seq_len chunks: no record is too long.
            if (task is { PredictsNextToken: true } && d.MaxLength != new DataSpec().MaxLength)
                e.Add(new("$.data.max_length", "only used for classification (a language model's text is one stream, cut into training.seq_len chunks): remove it"));
            if (task is { PredictsNextToken: true } && d.Overlength != OverlengthPolicies.Truncate)
                e.Add(new("$.data.overlength", "only used for classification (a language model's text is one stream, cut into training.seq_len chunks): remove it"));
        }

        var t = spec.Tokenizer;
        OneOf(e, "$.tokenizer.kind", t.Kind, TokenizerKinds.All);
        Range(e, "$.tokenizer.min_frequency", t.MinFrequency, 1, int.MaxValue);
        Range(e, "$.tokenizer.max_vocab", t.MaxVocab, 0, 10_000_000);
        if (t.MaxVocab is > 0 and < 3) e.Add(new("$.tokenizer.max_vocab", $"{t.MaxVocab} leaves no room beside <pad> and <unk>; use 0 (no limit) or at least 3"));

        var m = spec.Model;
        OneOf(e, "$.model.cell", m.Cell, CellKinds.All);
        Range(e, "$.model.layers", m.Layers, 1, MaxLayers);
        Range(e, "$.model.embedding_dim", m.EmbeddingDim, 1, MaxWidth);
        Range(e, "$.model.hidden_size", m.HiddenSize, 1, MaxWidth);
        if (!(m.Dropout >= 0 && m.Dropout < 1)) e.Add(new("$.model.dropout", $"{m.Dropout} must be in [0, 1)"));
        if (!(m.GateBias >= -10 && m.GateBias <= 10)) e.Add(new("$.model.gate_bias", $"{m.GateBias} must be in [-10, 10]"));
        if (m.Bidirectional && task is { PredictsNextToken: true })
            e.Add(new("$.model.bidirectional", "a language model predicts the next token and cannot read the future; bidirectional is for classification"));

        var o = spec.Optimizer;
        OneOf(e, "$.optimizer.kind", o.Kind, OptimizerKinds.All);
        Positive(e, "$.optimizer.lr", o.Lr);
        if (!(o.Momentum >= 0 && o.Momentum < 1)) e.Add(new("$.optimizer.momentum", $"{o.Momentum} must be in [0, 1)"));
        if (o.Momentum != 0 && o.Kind != OptimizerKinds.Sgd) e.Add(new("$.optimizer.momentum", $"only used by \"sgd\", not \"{o.Kind}\""));
        if (!(o.WeightDecay >= 0 && o.WeightDecay < 1)) e.Add(new("$.optimizer.weight_decay", $"{o.WeightDecay} must be in [0, 1)"));
        if (!(o.Beta1 >= 0 && o.Beta1 < 1)) e.Add(new("$.optimizer.beta1", $"{o.Beta1} must be in [0, 1)"));
        if (!(o.Beta2 >= 0 && o.Beta2 < 1)) e.Add(new("$.optimizer.beta2", $"{o.Beta2} must be in [0, 1)"));
        Positive(e, "$.optimizer.eps", o.Eps);

        var s = spec.Schedule;
        OneOf(e, "$.schedule.kind", s.Kind, ScheduleKinds.All);
        Range(e, "$.schedule.warmup_steps", s.WarmupSteps, 0, int.MaxValue);
        Range(e, "$.schedule.step_size", s.StepSize, 1, int.MaxValue);
        if (!(s.Gamma > 0 && s.Gamma <= 1)) e.Add(new("$.schedule.gamma", $"{s.Gamma} must be in (0, 1]"));
        if (!(s.MinLr >= 0 && s.MinLr <= o.Lr)) e.Add(new("$.schedule.min_lr", $"{s.MinLr} must be in [0, optimizer.lr = {o.Lr}]"));
        if (s.Kind == ScheduleKinds.Cosine && spec.Training.MaxSteps == 0 && spec.Training.MaxMinutes > 0)
            e.Add(new("$.schedule.kind", "\"cosine\" needs a known number of steps: set training.max_steps or rely on epochs without max_minutes"));

        var tr = spec.Training;
        Range(e, "$.training.batch_size", tr.BatchSize, 1, MaxBatch);
        Range(e, "$.training.seq_len", tr.SeqLen, 1, MaxSeqLen);
        OneOf(e, "$.training.lm_sampling", tr.LmSampling, LmSamplingKinds.All);
        Range(e, "$.training.epochs", tr.Epochs, 1, 1_000_000);
        Range(e, "$.training.max_steps", tr.MaxSteps, 0, int.MaxValue);
        if (!(tr.MaxMinutes >= 0 && tr.MaxMinutes < 1e6)) e.Add(new("$.training.max_minutes", $"{tr.MaxMinutes} must be in [0, 1e6) (0 = no limit)"));
        if (!(tr.ClipNorm >= 0 && double.IsFinite(tr.ClipNorm))) e.Add(new("$.training.clip_norm", $"{tr.ClipNorm} must be >= 0 (0 = off)"));
        Range(e, "$.training.max_nonfinite_steps", tr.MaxNonfiniteSteps, 1, 1_000_000);
        Range(e, "$.training.eval_interval", tr.EvalInterval, 0, int.MaxValue);
        Range(e, "$.training.eval_batches", tr.EvalBatches, 0, int.MaxValue);
        Range(e, "$.training.checkpoint_interval", tr.CheckpointInterval, 0, int.MaxValue);
        Range(e, "$.training.keep_checkpoints", tr.KeepCheckpoints, 1, 1000);
        Range(e, "$.training.max_restarts", tr.MaxRestarts, 0, 1000);
        Range(e, "$.training.threads", tr.Threads, 0, 1024);
        if (!DevicePattern().IsMatch(tr.Device)) e.Add(new("$.training.device", $"\"{tr.Device}\" must be \"cpu\", \"cuda\" or \"cuda:N\""));

        if (spec.Parallelism is { } par)
        {
            Range(e, "$.parallelism.data", par.Data, 0, 4096);
            OneOf(e, "$.parallelism.overlap", par.Overlap, OverlapKinds.All);
            if (par.Overlap == OverlapKinds.On && task is not { SignalsLayerGradients: true })
                e.Add(new("$.parallelism.overlap", "\"on\" needs task language_model: classifiers run packed sequences through the fused recurrent stack, with no point between layers to signal; use \"auto\" or \"off\""));
            else if (par.Overlap == OverlapKinds.On && m.Layers < 2)
                e.Add(new("$.parallelism.overlap", $"\"on\" needs model.layers >= 2 (got {m.Layers}): with one layer no backward is left to overlap with; use \"auto\" or \"off\""));
            else if (par.Overlap == OverlapKinds.On && par.Pipeline is not null)
                e.Add(new("$.parallelism.overlap", "\"on\" is for data parallelism alone: pipeline stages reduce their gradients after their last backward; use \"auto\" or \"off\""));
            OneOf(e, "$.parallelism.gradient_compression", par.GradientCompression, CompressionKinds.All);
            if (par.Pipeline is not null && par.GradientCompression is CompressionKinds.Fp16 or CompressionKinds.Bf16)
                e.Add(new("$.parallelism.gradient_compression", $"\"{par.GradientCompression}\" applies to data parallelism alone: pipeline stages sum their gradients in fp32; use \"none\""));
            if (par.Pipeline is null && par.Data != 0)
                e.Add(new("$.parallelism.data", "only used with parallelism.pipeline; for data parallelism alone, choose the workers with `submit --workers N`"));
            if (par.Pipeline is { } pp)
            {
                Range(e, "$.parallelism.pipeline.stages", pp.Stages, 1, MaxLayers);
                if (pp.Stages > m.Layers) e.Add(new("$.parallelism.pipeline.stages", $"{pp.Stages} exceeds model.layers {m.Layers}: every stage needs at least one recurrent layer"));
                Range(e, "$.parallelism.pipeline.microbatches", pp.Microbatches, 1, MaxBatch);
                if (pp.Microbatches >= 1 && tr.BatchSize % pp.Microbatches != 0)
                    e.Add(new("$.parallelism.pipeline.microbatches", $"{pp.Microbatches} does not divide training.batch_size {tr.BatchSize}: every micro-batch must have the same rows"));
                OneOf(e, "$.parallelism.pipeline.schedule", pp.Schedule, Distributed.Pipeline.PipelineSchedule.Kinds);
                try
                {
                    if (pp.Ranges() is { } ranges)
                    {
                        if (ranges.Count != pp.Stages) e.Add(new("$.parallelism.pipeline.partition", $"{ranges.Count} layer range(s) for {pp.Stages} stages"));
                        var next = 0;
                        foreach (var (first, count) in ranges)
                        {
                            if (first != next) { e.Add(new("$.parallelism.pipeline.partition", $"\"{pp.Partition}\": a range starts at layer {first} where {next} was expected; the ranges must cover layers 0..{m.Layers - 1} in order")); break; }
                            next = first + count;
                        }
                        if (next == ranges.Sum(r => r.Count) && next != m.Layers)
                            e.Add(new("$.parallelism.pipeline.partition", $"\"{pp.Partition}\" covers layers 0..{next - 1} of model.layers {m.Layers}"));
                    }
                }
                catch (FormatException ex)
                {
                    e.Add(new("$.parallelism.pipeline.partition", $"{ex.Message}; or \"balanced\""));
                }
            }
        }
        return e;
    }

    /// <summary>
    /// The workers a job with a pipeline runs on when given <paramref name="workers"/> (0 = as the spec decides): exactly
    /// D × K with parallelism.data D, else a multiple of K; a <see cref="SpecException"/> naming the field otherwise.
    /// The coordinator's submit, `dtrain plan` and `dtrain cluster run` apply the same rule. Unchanged for a job without a pipeline.
    /// </summary>
    public static int PipelineWorkers(JobSpec spec, int workers, string source)
    {
        if (spec.Parallelism?.Pipeline is not { } pipeline) return workers;
        var k = pipeline.Stages;
        var d = spec.Parallelism.Data;
        if (d > 0)
        {
            if (workers == 0) return d * k;
            if (workers != d * k)
                throw new SpecException(source, [new SpecError("$.parallelism.data", $"{d} replica(s) × {k} pipeline stages run on exactly {d * k} workers, but --workers is {workers}: submit it with --workers {d * k} (or 0)")]);
            return workers;
        }
        if (workers == 0 || workers % k != 0)
            throw new SpecException(source, [new SpecError("$.parallelism.pipeline.stages",
                $"a pipeline of {k} stages with parallelism.data 0 (replicas = workers / stages) needs --workers set to a multiple of {k}; it is {workers}")]);
        return workers;
    }

    /// <summary>
    /// Refuses what this version cannot run: pipeline stages run on a cluster only (<paramref name="onCluster"/>); a job
    /// whose whole model and its share of the batch over <paramref name="workers"/> need more than
    /// <paramref name="memory"/> in one process (see <see cref="Training.TrainingMemory.ThrowIfOver"/>; pipeline stages
    /// are checked per stage by the plan and by each worker's budget).
    /// </summary>
    public static void ThrowIfNotRunnable(JobSpec spec, string source, bool onCluster, Training.MemoryBudget? memory = null, int workers = 1)
    {
        if (spec.Parallelism?.Pipeline is null)
        {
            if (memory is not null) Training.TrainingMemory.ThrowIfOver(spec, source, memory, workers: workers);
            return;
        }
        if (!onCluster)
            throw new SpecException(source, [new SpecError("$.parallelism.pipeline",
                "pipeline stages run on a cluster (`dtrain submit` or `dtrain cluster run`); remove parallelism to train the whole model in this process")]);
    }

    static void OneOf(List<SpecError> e, string path, string value, IReadOnlyCollection<string> allowed)
    {
        if (!allowed.Contains(value)) e.Add(new(path, $"\"{value}\" is not one of: {string.Join(", ", allowed.Select(a => $"\"{a}\""))}"));
    }

    static void Range(List<SpecError> e, string path, int value, int min, int max)
    {
        if (value < min || value > max) e.Add(new(path, max == int.MaxValue ? $"{value} must be >= {min}" : $"{value} must be in [{min}, {max}]"));
    }

    static void Positive(List<SpecError> e, string path, double value)
    {
        if (!(value > 0 && double.IsFinite(value))) e.Add(new(path, $"{value} must be a positive number"));
    }

    [GeneratedRegex("^[A-Za-z0-9._-]{1,64}$")]
    private static partial Regex NamePattern();

    [GeneratedRegex("^(cpu|cuda|cuda:[0-9]{1,2})$")]
    private static partial Regex DevicePattern();
}
