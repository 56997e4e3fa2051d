using Dtrain.Protos.Membership;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>Registers with the coordinator once this worker's server is listening, then heartbeats; registers again when the coordinator forgot it; leaves on shutdown.</summary>
public sealed class CoordinatorLink(WorkerOptions options, WorkerIdentity identity, WorkerSlot state, ILogger<CoordinatorLink> log) : BackgroundService
{
    private Membership.MembershipClient? client;

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var address = await identity.Address.WaitAsync(stop).ConfigureAwait(false);
        using var channel = GrpcChannel.ForAddress(options.Coordinator);
        client = new Membership.MembershipClient(channel);
        var interval = TimeSpan.FromSeconds(1);
        var delay = TimeSpan.FromMilliseconds(200);
        while (!stop.IsCancellationRequested)
        {
            try
            {
                if (identity.WorkerId is null)
                {
                    var reply = await client.RegisterAsync(new RegisterRequest
                    {
                        Address = address,
                        Name = options.Name ?? "",
                        Capabilities = new WorkerCapabilities
                        {
                            Cores = Environment.ProcessorCount,
                            Device = options.Device,
                            MemoryBytes = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes,
                            Threads = options.Threads > 0 ? options.Threads : 1,
                            Version = typeof(CoordinatorLink).Assembly.GetName().Version?.ToString() ?? "",
                        },
                    }, deadline: DateTime.UtcNow.AddSeconds(10), cancellationToken: stop).ConfigureAwait(false);
                    identity.WorkerId = reply.WorkerId;
                    interval = TimeSpan.FromMilliseconds(Math.Max(100, reply.HeartbeatIntervalMs));
                    log.LogInformation("registered with {Coordinator} as {WorkerId} ({Address})", options.Coordinator, reply.WorkerId, address);
                }
                var beat = await client.HeartbeatAsync(new HeartbeatRequest { WorkerId = identity.WorkerId, JobId = state.Current?.JobId ?? "", Step = state.Step },
                    deadline: DateTime.UtcNow.AddSeconds(10), cancellationToken: stop).ConfigureAwait(false);
                if (!beat.Known)
                {
                    log.LogWarning("coordinator does not know worker {WorkerId}; registering again", identity.WorkerId);
                    identity.WorkerId = null;
                    await state.ReleaseAsync("coordinator forgot this worker").ConfigureAwait(false);
                    continue;
                }
                delay = TimeSpan.FromMilliseconds(200);
                await Task.Delay(interval, stop).ConfigureAwait(false);
            }
            catch (RpcException e) when (!stop.IsCancellationRequested)
            {
                log.LogWarning("coordinator {Coordinator} unreachable ({Status}); retrying in {Delay}", options.Coordinator, e.StatusCode, delay);
                await Task.Delay(delay, stop).ConfigureAwait(false);
                delay = TimeSpan.FromMilliseconds(Math.Min(5000, delay.TotalMilliseconds * 2));
            }
        }
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        if (client is not null && identity.WorkerId is { } id)
        {
            try
            {
                await client.LeaveAsync(new LeaveRequest { WorkerId = id, Reason = "worker shutting down" }, deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: cancellationToken).ConfigureAwait(false);
            }
            catch (RpcException)
            {
                // The coordinator will declare this worker lost when heartbeats stop.
            }
        }
        await base.StopAsync(cancellationToken).ConfigureAwait(false);
    }
}
