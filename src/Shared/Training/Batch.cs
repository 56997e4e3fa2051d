using static TorchSharp.torch;

namespace Dtrain.Training;

/// <summary>
/// One (micro-)batch on its way to the model. Inputs (B,T) int64; Targets (B,T) for language modelling or (B) for
/// classification; Lengths (B) int64 for classification. Count is what the loss is averaged over (tokens or samples).
/// </summary>
public sealed class Batch(Tensor inputs, Tensor targets, Tensor? lengths, int rows, long count) : IDisposable
{
    public Tensor Inputs { get; } = inputs;
    public Tensor Targets { get; } = targets;
    public Tensor? Lengths { get; } = lengths;
    public int Rows { get; } = rows;
    public long Count { get; } = count;

    public void Dispose()
    {
        Inputs.Dispose();
        Targets.Dispose();
        Lengths?.Dispose();
    }
}

/// <summary>Where a global step falls in the data: the epoch and the step within it.</summary>
public readonly record struct StepPosition(long Epoch, long StepInEpoch);

/// <summary>Cuts the global batch of every step into rows; a worker materializes only its own row range.</summary>
public interface IBatchSource
{
    long StepsPerEpoch { get; }
    /// <summary>Rows (sequences) in the global batch of this step; the last step of an epoch may have fewer.</summary>
    int RowsAt(StepPosition position);
    /// <summary>Builds rows [rowStart, rowStart + rowCount) of the global batch at <paramref name="position"/>; null when the range is empty.</summary>
    Batch? Get(StepPosition position, int rowStart, int rowCount);
}
