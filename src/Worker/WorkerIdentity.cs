namespace Dtrain.Worker;

/// <summary>What this worker process knows about itself: the address it serves on and the id (and registration token) the coordinator gave it.</summary>
public sealed class WorkerIdentity
{
    private readonly TaskCompletionSource<string> address = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string? WorkerId { get; set; }
    /// <summary>The secret of the current registration, sent with heartbeats and leave.</summary>
    public string Token { get; set; } = "";
    /// <summary>The coordinator cordoned this worker (learnt from heartbeats); sent again when it registers, so a restarted coordinator keeps the cordon.</summary>
    public bool Cordoned { get; set; }
    public Task<string> Address => address.Task;
    /// <summary>Where Prometheus scrapes this worker's /metrics (its HTTP listener, Worker:HttpPort); "" when it has none. Set before <see cref="Address"/>.</summary>
    public string HttpAddress { get; set; } = "";
    public void SetAddress(string value) => address.TrySetResult(value);
}
