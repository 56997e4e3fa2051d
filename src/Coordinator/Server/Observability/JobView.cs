namespace Dtrain.Server;

/// <summary>
/// A job as `dtrain status` shows it, live: its state and progress (read together), a row per worker of it in rank
/// order, and the stall line, if any. <see cref="Names"/>: whether workers' names may be shown (callers who may list workers).
/// <see cref="ProtoMapper"/> builds its <c>JobInfo</c>.
/// </summary>
public sealed record JobView(JobStatus Status, JobProgress Progress, IReadOnlyList<WorkerView> Workers, string? Stall, bool Names);
