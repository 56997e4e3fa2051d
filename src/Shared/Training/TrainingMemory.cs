using System.Globalization;
using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Training;

/// <summary>How much memory training may use, where that number comes from, and how to change it (for messages).</summary>
public sealed record MemoryBudget(long Bytes, string Source, string Remedy = "or set the budget with --memory-budget MB (0 = no check)")
{
    /// <summary>No check.</summary>
    public static readonly MemoryBudget None = new(0, "no limit");

    /// <summary><paramref name="megabytes"/> MB (10^6 bytes) from <paramref name="source"/>; 0 = no check. Throws <see cref="ArgumentException"/> for a negative or non-finite value.</summary>
    public static MemoryBudget FromMegabytes(double megabytes, string source)
    {
        if (!(megabytes >= 0 && double.IsFinite(megabytes))) throw new ArgumentException($"{source} {megabytes.ToString(CultureInfo.InvariantCulture)} must be a number of MB >= 0 (0 = no check)");
        // Any budget above 0 is one (a fraction of a byte still refuses every job), never "no check".
        return megabytes == 0 ? None : new MemoryBudget(Math.Max(1, (long)Math.Min(megabytes * 1e6, long.MaxValue)), source);
    }

    /// <summary>
    /// The memory this process can still get: the least of the kernel's MemAvailable, the room left under its cgroup's
    /// memory limit (v2 memory.max, v1 memory.limit_in_bytes, minus what the cgroup uses) and what the .NET runtime
    /// sees as available (<see cref="GC.GetGCMemoryInfo()"/>, which honours container limits).
    /// </summary>
    public static MemoryBudget Available()
    {
        var candidates = new List<(long Bytes, string Source)>();
        var total = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (total > 0) candidates.Add((total, "the memory the .NET runtime may use"));
        if (MemAvailable() is { } available) candidates.Add((available, "MemAvailable in /proc/meminfo"));
        if (CgroupRoom() is { } room) candidates.Add((room, "room under this cgroup's memory limit"));
        if (candidates.Count == 0) return None;
        var (bytes, source) = candidates.MinBy(c => c.Bytes);
        return new MemoryBudget(Math.Max(bytes, 1), $"available memory: {source}");
    }

    public string Describe() => Bytes == 0 ? "no limit" : $"{PipelinePlan.Mb(Bytes)} MB ({Source})";

    private static long? MemAvailable()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal)) continue;
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return parts.Length >= 2 && long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var kb) ? kb * 1024 : null;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>Limit minus usage of this process's memory cgroup (v2, else v1); null without a limit.</summary>
    private static long? CgroupRoom()
    {
        string? v2 = null, v1 = null;
        try
        {
            if (File.Exists("/proc/self/cgroup"))
            {
                foreach (var line in File.ReadLines("/proc/self/cgroup"))
                {
                    var parts = line.Split(':', 3);
                    if (parts.Length != 3) continue;
                    if (parts[0] == "0" && parts[1] == "") v2 = parts[2];
                    else if (parts[1].Split(',').Contains("memory")) v1 = parts[2];
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return Room("/sys/fs/cgroup", v2, "memory.max", "memory.current")
            ?? Room("/sys/fs/cgroup/memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes");
    }

    private static long? Room(string root, string? path, string limitFile, string usageFile)
    {
        // Inside a container the cgroup's own directory is usually mounted as the root.
        foreach (var dir in new[] { path is null ? null : Path.Join(root, path), root })
        {
            if (dir is null) continue;
            try
            {
                var limitPath = Path.Join(dir, limitFile);
                if (!File.Exists(limitPath)) continue;
                var limitText = File.ReadAllText(limitPath).Trim();
                // "max" (v2) or a huge page-rounded number (v1) means no limit.
                if (!long.TryParse(limitText, NumberStyles.None, CultureInfo.InvariantCulture, out var limit) || limit >= long.MaxValue / 2) return null;
                var usage = long.TryParse(File.ReadAllText(Path.Join(dir, usageFile)).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var u) ? u : 0;
                return Math.Max(0, limit - usage);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        return null;
    }
}

/// <summary>
/// The memory a job needs to train, from the same estimate the pipeline planner and the workers use
/// (<see cref="PipelinePlan.Estimate"/>: weights, gradients, optimizer state, activations), and the check that
/// refuses a job over a <see cref="MemoryBudget"/> before anything is allocated — by `dtrain train`, `dtrain validate`
/// and whoever else wants to (<see cref="JobSpecValidator.ThrowIfNotRunnable"/>).
/// </summary>
public static class TrainingMemory
{
    /// <summary>The smallest vocabulary any data gives (&lt;pad&gt;, &lt;unk&gt; and one token), for estimates made before the data is read.</summary>
    public const int MinimumVocabulary = 3;

    /// <summary>
    /// The whole model in one process training <paramref name="rows"/> rows per step (the batch, or one data-parallel
    /// replica's share). Classification activations count sequences of <paramref name="longestSequence"/> tokens
    /// (default: data.max_length, the longest a record can be).
    /// </summary>
    public static StageMemory Estimate(JobSpec spec, int vocabSize, int outputs, int rows, int? longestSequence = null)
    {
        var layout = ModelLayout.Of(spec.Model, vocabSize, outputs);
        var whole = new StagePlan(0, 0, layout.Layers.Count, layout.Total, HasEmbedding: true, HasHead: true);
        var sized = longestSequence is { } t ? spec with { Data = spec.Data with { MaxLength = Math.Max(1, t) } } : spec;
        return PipelinePlan.Estimate(sized, whole, rows, 1, outputs);
    }

    /// <summary>
    /// Throws a <see cref="SpecException"/> naming the fields and the estimate when training <paramref name="spec"/> needs
    /// more than <paramref name="budget"/> in one process — or, with <paramref name="workers"/> data-parallel workers,
    /// in each of them (a whole replica, its share of the batch). Without the data (<paramref name="vocabSize"/> null)
    /// the smallest possible vocabulary is assumed, so only a spec that cannot fit with any data is refused.
    /// </summary>
    public static void ThrowIfOver(JobSpec spec, string source, MemoryBudget budget, int? vocabSize = null, int? classes = null, int? longestSequence = null, int workers = 1)
    {
        if (budget.Bytes <= 0) return;
        var vocab = vocabSize ?? MinimumVocabulary;
        var outputs = TrainingTasks.For(spec).Outputs(vocab, classes ?? (spec.Data.Synthetic?.Classes ?? 2));
        var rows = (int)Math.Max(1, ((long)spec.Training.BatchSize + Math.Max(1, workers) - 1) / Math.Max(1, workers));
        // Within the validator's bounds (16 layers, widths 8192, batch 65536, sequences 10^6, vocabulary 10^7) the
        // estimate stays below 10^18 bytes: no overflow.
        var need = Estimate(spec, vocab, outputs, rows, longestSequence);
        if (need.Total <= budget.Bytes) return;
        throw new SpecException(source, [Error(spec, need, budget, vocabSize, vocab, outputs, longestSequence, rows)]);
    }

    /// <summary>
    /// The fields the model's size comes from, for messages: "model.layers 2 × model.hidden_size 2048 (model.embedding_dim
    /// 64, model.cell lstm, optimizer.kind adam; 2,109,000,000 parameters with a vocabulary of 40 tokens (tokenizer) and
    /// 1,000,000 labels (in the data))"; without the data (<paramref name="known"/> false) "with the smallest possible vocabulary".
    /// </summary>
    public static string Fields(JobSpec spec, int vocab, int outputs, bool known)
    {
        var m = spec.Model;
        var inv = CultureInfo.InvariantCulture;
        var parameters = ModelLayout.Of(m, vocab, outputs).Total;
        var data = !known ? " with the smallest possible vocabulary"
            : $" with a vocabulary of {vocab.ToString("N0", inv)} tokens (tokenizer){(TrainingTasks.For(spec).HasLabels ? $" and {outputs.ToString("N0", inv)} labels (in the data)" : "")}";
        return $"model.layers {m.Layers} × model.hidden_size {m.HiddenSize} (model.embedding_dim {m.EmbeddingDim}, model.cell {m.Cell}{(m.Bidirectional ? ", bidirectional" : "")}, " +
            $"optimizer.kind {spec.Optimizer.Kind}; {parameters.ToString("N0", inv)} parameters{data})";
    }

    private static SpecError Error(JobSpec spec, StageMemory need, MemoryBudget budget, int? knownVocab, int vocab, int outputs, int? longest, int rows)
    {
        var m = spec.Model;
        var t = spec.Training;
        var inv = CultureInfo.InvariantCulture;
        var state = need.Weights + need.Gradients + need.OptimizerState;
        var length = TrainingTasks.For(spec).DescribeLength(spec, longest);
        var model = Fields(spec, vocab, outputs, known: knownVocab is not null);
        var message = $"training needs about {PipelinePlan.Mb(need.Total)} MB — weights {PipelinePlan.Mb(need.Weights)} + gradients {PipelinePlan.Mb(need.Gradients)} + " +
            $"optimizer state {PipelinePlan.Mb(need.OptimizerState)} + activations {PipelinePlan.Mb(need.Activations)} — for {model} and the activations of " +
            $"training.batch_size {t.BatchSize}{(rows == t.BatchSize ? "" : $" ({rows} rows per worker)")} × {length}; that is over the memory budget of {budget.Describe()}. " +
            $"Make the model or the batch smaller, split the model over workers (parallelism.pipeline), {budget.Remedy}";
        // Name the part that does not fit: the model itself, or the batch on top of it.
        return new SpecError(state > budget.Bytes ? "$.model" : "$.training.batch_size", message);
    }
}
