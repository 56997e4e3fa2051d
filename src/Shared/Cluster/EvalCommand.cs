namespace Dtrain.Cluster;

/// <summary>
/// Evaluate on the validation split the worker holds: at most <see cref="MaxBatches"/> batches of
/// <see cref="BatchSize"/>, its part <see cref="Part"/> of <see cref="Parts"/> (a data-parallel job's rank of its
/// world: <see cref="Training.EvalPart"/>); the worker answers with its part's sums.
/// </summary>
public sealed record EvalCommand(string JobId, int BatchSize, int MaxBatches, int Part = 0, int Parts = 1);
