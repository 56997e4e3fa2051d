using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// Feeds a job's workers their rows epoch by epoch, whichever driver runs it: when the next step to launch is the first
/// not yet sent, every replica gets its rows of the rest of that epoch at once (and rank 0 the validation split when
/// given); each step's global count (what the loss of every replica sums over) is kept until the step is launched.
/// </summary>
public sealed class EpochShards(string jobId, ShardPlan plan, long totalSteps, long start)
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
        var perReplica = Build(plan, replicas, step, epochEnd, globalCounts, validation);
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
    /// Every replica's rows of steps [<paramref name="from"/>, <paramref name="to"/>), and the validation split for
    /// replica 0 when given; records each step's global count.
    /// </summary>
    internal static ShardSlice[] Build(ShardPlan plan, int replicas, long from, long to, Dictionary<long, long> globalCounts, PreparedData? validation)
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
        return [.. perReplica.Select((steps, rank) => rank == 0 && validation is not null
            ? new ShardSlice(steps, validation.ValidationTokens, [.. validation.ValidationSequences.Select((tokens, i) => new ValidationSample(tokens, validation.ValidationLabels[i]))])
            : ShardSlice.Of(steps))];
    }
}
