namespace Dtrain.Cluster;

/// <summary>
/// A worker's rows of one step: <see cref="Rows"/> × <see cref="Width"/> token ids, targets (per token for a language
/// model, per row for classification), lengths (classification), the count the loss sums over, and whether a language
/// model forgets its carried hidden state before it (an epoch's first step). No rows: <see cref="Rows"/> 0, width 1.
/// </summary>
public sealed record ShardRows(long Step, int Rows, int Width, int[] Inputs, int[] Targets, int[]? Lengths, long Count, bool ResetState)
{
    /// <summary>
    /// A dataset job's plan only: no ids travel; the worker reads rows [<see cref="RowStart"/>, RowStart + <see cref="Rows"/>)
    /// of the step's global batch from the dataset itself (<see cref="Assignment.Dataset"/>).
    /// </summary>
    public bool Planned { get; init; }
    public int RowStart { get; init; }

    /// <summary>A planned step's rows once the worker has read them from the dataset (null otherwise).</summary>
    public Training.BatchRows? Read { get; init; }

    /// <summary>The plan of rank rows [<paramref name="start"/>, start + <paramref name="rows"/>) of <paramref name="step"/>, summing to <paramref name="count"/>.</summary>
    public static ShardRows Plan(long step, int start, int rows, long count, bool resetState) =>
        new(step, rows, 1, [], [], null, count, resetState) { Planned = true, RowStart = start };
}
