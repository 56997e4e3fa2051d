namespace Dtrain.Cluster;

/// <summary>
/// A worker's rows of one step: <see cref="Rows"/> × <see cref="Width"/> token ids, targets (per token for a language
/// model, per row for classification), lengths (classification), the count the loss sums over, and whether a language
/// model forgets its carried hidden state before it (an epoch's first step). No rows: <see cref="Rows"/> 0, width 1.
/// </summary>
public sealed record ShardRows(long Step, int Rows, int Width, int[] Inputs, int[] Targets, int[]? Lengths, long Count, bool ResetState);
