using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// Feeds a job's workers their rows epoch by epoch, whichever driver runs it: when the next step to launch is the first
/// not yet sent, every replica gets its rows of the rest of that epoch at once (and the validation split when given:
/// each rank evaluates its part of it); each step's global count (what the loss of every replica sums over) is kept until the step is launched.
/// A dataset job (<paramref name="planned"/>) sends only the plan — each rank's row range of each step and its count —
/// and the workers read the rows (and their parts of the validation split) from the dataset themselves: the coordinator never
/// reads a token of it. With <paramref name="cut"/> (a data-parallel job's evaluation), each rank is sent only the part
/// of an in-memory validation split its evaluation reads; without it, every rank gets the whole split.
/// </summary>
public sealed class EpochShards(string jobId, ShardPlan plan, long totalSteps, long start, bool planned = false, ValidationCut? cut = null)
{
    private readonly Dictionary<long, long> globalCounts = [];
    private long loadedUntil = start;

    /// <summary>
    /// Sends the rows of the epoch of <paramref name="step"/> when it is the first step not yet sent: worker
    /// <c>slot</c> gets replica <paramref name="replicaOf"/>(slot)'s rows of a plan over <paramref name="replicas"/> replicas.
    /// </summary>
    public async Task EnsureLoadedAsync(long step, JobWorkers workers, int replicas, Func<int, int> replicaOf, PreparedData? validation, CancellationToken cancel)
    {
        if (step != loadedUntil) return;
        var epochEnd = Math.Min(totalSteps, (plan.PositionOf(step).Epoch + 1) * plan.StepsPerEpoch);
        var perReplica = planned ? BuildPlan(plan, replicas, step, epochEnd, globalCounts, validation is not null) : Build(plan, replicas, step, epochEnd, globalCounts, validation, cut);
        await workers.LoadShardsAsync(jobId, [.. Enumerable.Range(0, workers.Count).Select(slot => perReplica[replicaOf(slot)])], step, cancel).ConfigureAwait(false);
        loadedUntil = epochEnd;
    }

    /// <summary>The global count of a sent step (taken once, when the step is launched).</summary>
    public long TakeCount(long step)
    {
        var count = globalCounts[step];
        globalCounts.Remove(step);
        return count;
    }

    /// <summary>
    /// A dataset job's plan of steps [<paramref name="from"/>, <paramref name="to"/>): every replica's row range and count
    /// of each step (nothing read), and for every replica the word to evaluate on the dataset's validation split; records
    /// each step's global count.
    /// </summary>
    internal static ShardSlice[] BuildPlan(ShardPlan plan, int replicas, long from, long to, Dictionary<long, long> globalCounts, bool validation)
    {
        var perReplica = Enumerable.Range(0, replicas).Select(_ => new List<ShardRows>()).ToArray();
        for (var step = from; step < to; step++)
        {
            long total = 0;
            var reset = plan.PositionOf(step).StepInEpoch == 0;
            for (var rank = 0; rank < replicas; rank++)
            {
                var (start, count) = plan.RangeFor(step, rank);
                var sum = plan.CountFor(step, rank);
                perReplica[rank].Add(ShardRows.Plan(step, start, count, sum, reset));
                total += sum;
            }
            globalCounts[step] = total;
        }
        return [.. perReplica.Select((steps, rank) => ShardSlice.Of(steps) with { DatasetValidation = validation })];
    }

    /// <summary>
    /// Every replica's rows of steps [<paramref name="from"/>, <paramref name="to"/>), and the validation split for
    /// every replica when given (each evaluates its part of it: with <paramref name="cut"/>, only that part is sent, rank
    /// r of <paramref name="replicas"/> evaluating part r); records each step's global count.
    /// </summary>
    internal static ShardSlice[] Build(ShardPlan plan, int replicas, long from, long to, Dictionary<long, long> globalCounts, PreparedData? validation, ValidationCut? cut = null)
    {
        var perReplica = Enumerable.Range(0, replicas).Select(_ => new List<ShardRows>()).ToArray();
        for (var step = from; step < to; step++)
        {
            long count = 0;
            var position = plan.PositionOf(step);
            for (var rank = 0; rank < replicas; rank++)
            {
                var rows = plan.RowsFor(step, rank);
                if (rows is null)
                {
                    perReplica[rank].Add(new ShardRows(step, 0, 1, [], [], null, 0, position.StepInEpoch == 0));
                    continue;
                }
                perReplica[rank].Add(new ShardRows(step, rows.Rows, rows.Width, [.. rows.Inputs.Select(v => (int)v)], [.. rows.Targets.Select(v => (int)v)],
                    rows.Lengths is null ? null : [.. rows.Lengths.Select(v => (int)v)], rows.Count, position.StepInEpoch == 0));
                count += rows.Count;
            }
            globalCounts[step] = count;
        }
        if (validation is null) return [.. perReplica.Select(ShardSlice.Of)];
        if (cut is not null) return [.. perReplica.Select((steps, rank) => cut.Part(steps, validation, new EvalPart(rank, replicas)))];
        ValidationSample[] examples = [.. validation.ValidationSequences.Select((tokens, i) => new ValidationSample(tokens, validation.ValidationLabels[i]))];
        return [.. perReplica.Select(steps => new ShardSlice(steps, validation.ValidationTokens, examples))];
    }
}

/// <summary>
/// How a data-parallel job's evaluation cuts its validation split (the job's batch size, sequence length and
/// evaluation batches, as <see cref="Evaluator"/> reads it), so the coordinator sends each rank only the tokens or
/// examples of its part: a language model's contiguous range of its streams (the tokens from its first stream's start
/// to its last one's last target), a classifier's of its batches. The worker reads them by the whole split's positions,
/// so every rank evaluates exactly what it would with the whole split, and the metrics are unchanged.
/// </summary>
public sealed record ValidationCut(bool Classification, int BatchSize, int SeqLen, int MaxBatches)
{
    public static ValidationCut For(Specs.JobSpec spec) =>
        new(Training.Tasks.TrainingTasks.For(spec).HasLabels, spec.Training.BatchSize, spec.Training.SeqLen, spec.Training.EvalBatches);

    /// <summary>The slice of <paramref name="steps"/> with part <paramref name="part"/> of <paramref name="validation"/>.</summary>
    public ShardSlice Part(IReadOnlyList<ShardRows> steps, PreparedData validation, EvalPart part)
    {
        if (Classification)
        {
            var count = validation.ValidationSequences.Count;
            var (first, end) = Evaluator.ClassificationRange(count, BatchSize, MaxBatches, part);
            ValidationSample[] examples = [.. Enumerable.Range(first, end - first).Select(i => new ValidationSample(validation.ValidationSequences[i], validation.ValidationLabels[i]))];
            return new ShardSlice(steps, [], examples) { ValidationOffset = first, ValidationTotal = count };
        }
        var tokens = validation.ValidationTokens;
        var (start, stop) = Evaluator.LanguageModelRange(tokens.Length, BatchSize, SeqLen, MaxBatches, part);
        return new ShardSlice(steps, tokens[(int)start..(int)stop], []) { ValidationOffset = start, ValidationTotal = tokens.Length };
    }
}
