namespace Dtrain.Cluster;

/// <summary>Evaluate on the validation split the worker holds: at most <see cref="MaxBatches"/> batches of <see cref="BatchSize"/>.</summary>
public sealed record EvalCommand(string JobId, int BatchSize, int MaxBatches);
