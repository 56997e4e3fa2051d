using static TorchSharp.torch;

namespace Dtrain.Training;

/// <summary>
/// A (micro-)batch as plain arrays, before it becomes tensors: what the coordinator ships to workers.
/// Inputs are Rows × Width token ids; Targets are Rows × Width (language model) or Rows (classification);
/// Lengths (classification) are each in 1..Width. Count is what the loss sums over (tokens or examples).
/// </summary>
public sealed record BatchRows(int Rows, int Width, long[] Inputs, long[] Targets, long[]? Lengths, long Count);

/// <summary>One (micro-)batch as tensors: Inputs (B,T) int64; Targets (B,T) or (B); Lengths (B) int64 for classification.</summary>
public sealed class Batch(Tensor inputs, Tensor targets, Tensor? lengths, int rows, long count) : IDisposable
{
    public Tensor Inputs { get; } = inputs;
    public Tensor Targets { get; } = targets;
    public Tensor? Lengths { get; } = lengths;
    public int Rows { get; } = rows;
    public long Count { get; } = count;

    /// <summary>Builds tensors from arrays whose token ids were already checked against the vocabulary.</summary>
    public static Batch From(BatchRows r)
    {
        var isLm = r.Lengths is null;
        return new Batch(
            tensor(r.Inputs, [r.Rows, r.Width]),
            isLm ? tensor(r.Targets, [r.Rows, r.Width]) : tensor(r.Targets),
            isLm ? null : tensor(r.Lengths!),
            r.Rows,
            r.Count);
    }

    public void Dispose()
    {
        Inputs.Dispose();
        Targets.Dispose();
        Lengths?.Dispose();
    }
}

/// <summary>Where a global step falls in the data: the epoch and the step within it.</summary>
public readonly record struct StepPosition(long Epoch, long StepInEpoch);

/// <summary>Cuts the global batch of every step into rows; a worker gets only its own row range.</summary>
public interface IBatchSource
{
    long StepsPerEpoch { get; }
    /// <summary>Rows (sequences) in the global batch of this step; the last step of an epoch may have fewer.</summary>
    int RowsAt(StepPosition position);
    /// <summary>Rows [rowStart, rowStart + rowCount) of the global batch at <paramref name="position"/>; null when the range is empty.</summary>
    BatchRows? GetRows(StepPosition position, int rowStart, int rowCount);
    /// <summary>
    /// What the loss of rows [rowStart, rowStart + rowCount) at <paramref name="position"/> sums over (tokens or examples:
    /// <see cref="BatchRows.Count"/> of <see cref="GetRows"/>), without reading them: a coordinator plans a dataset's steps from its counts alone.
    /// </summary>
    long CountAt(StepPosition position, int rowStart, int rowCount);
}

public static class BatchSourceExtensions
{
    /// <summary>The rows as tensors; null when the range is empty.</summary>
    public static Batch? Get(this IBatchSource source, StepPosition position, int rowStart, int rowCount) =>
        source.GetRows(position, rowStart, rowCount) is { } rows ? Batch.From(rows) : null;

    /// <summary>The row range of rank <paramref name="rank"/> out of <paramref name="world"/> in a global batch of <paramref name="rows"/> rows: contiguous, sizes differ by at most one.</summary>
    public static (int Start, int Count) RowRange(int rows, int rank, int world)
    {
        var start = (int)((long)rows * rank / world);
        var end = (int)((long)rows * (rank + 1) / world);
        return (start, end - start);
    }
}
