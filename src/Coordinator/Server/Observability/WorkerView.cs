namespace Dtrain.Server;

/// <summary>A worker as a listing shows it as of <see cref="Now"/> (its time in phase and heartbeat age then), and whether a stall warning names it.</summary>
public sealed record WorkerView(WorkerRecord Worker, DateTimeOffset Now, bool Stalled);
