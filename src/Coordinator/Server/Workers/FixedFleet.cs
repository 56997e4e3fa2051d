namespace Dtrain.Server;

/// <summary>A job's workers that never change (in-memory drivers, and jobs that may not resize).</summary>
public sealed class FixedFleet(JobWorkers workers) : IJobFleet
{
    public JobWorkers Workers { get; } = workers;
    public long Generation => 1;
    public CancellationToken Departed => CancellationToken.None;
    public string? ChangeDue => null;
    public Task<bool> AbsorbsAsync(Exception failure, CancellationToken cancel) => Task.FromResult(false);
    public Task<Reconfiguration> ReconfigureAsync(string reason, AssignmentBuilder assign, CancellationToken cancel) => throw new InvalidOperationException("a fixed set of workers cannot change");
    public Task ReassignAsync(string reason, CancellationToken cancel) => throw new InvalidOperationException("a fixed set of workers cannot change");
}
