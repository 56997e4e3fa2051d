using Dtrain.Training;

namespace Dtrain.Distributed;

/// <summary>
/// How a job's global batches are split across ranks: at every step rank r gets rows
/// [r·R/W, (r+1)·R/W) of the global batch of R rows, so the union over ranks is exactly the batch one process
/// would see (DistributedSampler semantics: every example once per epoch, uneven remainders spread by one row).
/// </summary>
public sealed class ShardPlan(IBatchSource source, int worldSize, long totalSteps)
{
    public int WorldSize { get; } = worldSize;
    public long TotalSteps { get; } = totalSteps;
    public long StepsPerEpoch => source.StepsPerEpoch;

    public StepPosition PositionOf(long step) => new(step / source.StepsPerEpoch, step % source.StepsPerEpoch);

    /// <summary>Rows of the global batch of step <paramref name="step"/>.</summary>
    public int RowsAt(long step) => source.RowsAt(PositionOf(step));

    /// <summary>The rows [Start, Start + Count) of step <paramref name="step"/>'s global batch that rank <paramref name="rank"/> gets.</summary>
    public (int Start, int Count) RangeFor(long step, int rank) => BatchSourceExtensions.RowRange(RowsAt(step), rank, WorldSize);

    /// <summary>What the loss of rank <paramref name="rank"/>'s rows at step <paramref name="step"/> sums over, without reading them.</summary>
    public long CountFor(long step, int rank)
    {
        var position = PositionOf(step);
        var (start, count) = BatchSourceExtensions.RowRange(source.RowsAt(position), rank, WorldSize);
        return count == 0 ? 0 : source.CountAt(position, start, count);
    }

    /// <summary>Rows of rank <paramref name="rank"/> at global step <paramref name="step"/>; null when it has none.</summary>
    public BatchRows? RowsFor(long step, int rank)
    {
        var position = PositionOf(step);
        var (start, count) = BatchSourceExtensions.RowRange(source.RowsAt(position), rank, WorldSize);
        return count == 0 ? null : source.GetRows(position, start, count);
    }
}
