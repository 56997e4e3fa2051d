namespace Dtrain.Worker;

/// <summary>Takes a peer's training state, worker to worker (a joining or lagging replica of an elastic job).</summary>
public interface IPeerState
{
    Task<byte[]> FetchStateAsync(string address, string workerId, string certificateSha256, string jobId, long step, CancellationToken cancel);
}
