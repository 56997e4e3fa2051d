using Dtrain.Protos.Membership;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>
/// Registers with the coordinator once this worker's server is listening, then heartbeats; registers again when the
/// coordinator forgot it; leaves on shutdown (once, and then stays away). Readiness (health) follows registration.
/// Shutdown (SIGTERM) drains in <see cref="StoppingAsync"/>, which the host awaits before it stops any service (Kestrel
/// included, which still serves the step meanwhile): the step in progress ends, the coordinator is told, the job and
/// its ring are released — an open collective stream would otherwise hold Kestrel's graceful stop for its timeout.
/// </summary>
/// <remarks>
/// With TLS, each registration carries a signing request for this process's key (and the join token, if any): the
/// coordinator keeps the worker's name and address for that key, so a registration again (the reply was lost, the
/// coordinator forgot it) is the same worker, and nobody else can take them over; the certificate
/// the coordinator returns is installed at once, and the channel to the coordinator is made anew to present it.
/// </remarks>
public sealed class CoordinatorLink(WorkerOptions options, WorkerIdentity identity, WorkerSlot state, ServerHealth health, WorkerSecurity security, ILogger<CoordinatorLink> log)
    : BackgroundService, IHostedLifecycleService
{
    // Owned here, not by the loop: the loop ends when this worker leaves, while the Leave call may still be in flight.
    // A new channel after each registration with TLS (it presents the certificate just issued); all are disposed at the end.
    private readonly List<GrpcChannel> channels = [];
    private Membership.MembershipClient? client;
    private int left;
    // This process's key: the same in every registration (it owns the worker's name and address at the coordinator).
    private readonly System.Security.Cryptography.ECDsa key = System.Security.Cryptography.ECDsa.Create(System.Security.Cryptography.ECCurve.NamedCurves.nistP256);

    private Membership.MembershipClient Connect()
    {
        var channel = Channels.Create(options.Coordinator, security.Tls, ExpectedPeer.Coordinator);
        lock (channels) channels.Add(channel);
        return new Membership.MembershipClient(channel);
    }

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var address = await identity.Address.WaitAsync(stop).ConfigureAwait(false);
        client = Connect();
        var interval = TimeSpan.FromSeconds(1);
        var delay = TimeSpan.FromMilliseconds(200);
        while (!stop.IsCancellationRequested && Volatile.Read(ref left) == 0)
        {
            try
            {
                if (identity.WorkerId is null)
                {
                    var request = new RegisterRequest
                    {
                        Address = address,
                        Name = options.Name?.Trim() ?? "",
                        Cordoned = identity.Cordoned,
                        HttpAddress = identity.HttpAddress,
                        JoinToken = security.JoinToken ?? "",
                        Capabilities = new WorkerCapabilities
                        {
                            Cores = Environment.ProcessorCount,
                            Device = options.Device,
                            // What this worker may use: its memory, or its Worker:MemoryBudgetMb when that is less (the
                            // coordinator checks a job against it before the first step, once the vocabulary is known).
                            MemoryBytes = options.MemoryBudgetMb is > 0 and var mb
                                ? Math.Min(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, (long)Math.Min(mb * 1e6, long.MaxValue))
                                : GC.GetGCMemoryInfo().TotalAvailableMemoryBytes,
                            Threads = options.ResolvedThreads,
                            Version = typeof(CoordinatorLink).Assembly.GetName().Version?.ToString() ?? "",
                            Protocol = WireProtocol.Version,
                        },
                    };
                    if (security.Tls is not null)
                        request.Csr = Google.Protobuf.ByteString.CopyFrom(WorkerSecurity.SigningRequest(key, options.Name ?? "worker"));
                    var reply = await client.RegisterAsync(request, deadline: DateTime.UtcNow.AddSeconds(options.CoordinatorCallTimeoutSeconds), cancellationToken: stop).ConfigureAwait(false);
                    if (security.Tls is not null)
                    {
                        PeerIdentity issued;
                        try
                        {
                            issued = security.Install(reply.Certificate, key);
                        }
                        catch (InvalidDataException e)
                        {
                            log.LogError("registered with {Coordinator} as {WorkerId}, but {Message}; registering again in {Delay}", options.Coordinator, reply.WorkerId, e.Message, delay);
                            await Task.Delay(delay, stop).ConfigureAwait(false);
                            delay = TimeSpan.FromMilliseconds(Math.Min(5000, delay.TotalMilliseconds * 2));
                            continue;
                        }
                        client = Connect();
                        log.LogInformation("{WorkerId}: serving and dialling with the certificate the coordinator issued ({Identity})", reply.WorkerId, issued);
                    }
                    identity.WorkerId = reply.WorkerId;
                    identity.Token = reply.Token;
                    interval = TimeSpan.FromMilliseconds(Math.Max(100, reply.HeartbeatIntervalMs));
                    log.LogInformation("registered with {Coordinator} as {WorkerId}{Name} ({Address}, {Threads} torch thread(s))", options.Coordinator, reply.WorkerId,
                        string.IsNullOrWhiteSpace(options.Name) ? "" : $" (name {options.Name.Trim()})", address, options.ResolvedThreads);
                }
                var beat = await client.HeartbeatAsync(new HeartbeatRequest { WorkerId = identity.WorkerId, Token = identity.Token, JobId = state.Current?.JobId ?? "", Step = state.Step, Activity = state.Activity.Snapshot().ToProto() },
                    deadline: DateTime.UtcNow.AddSeconds(options.CoordinatorCallTimeoutSeconds), cancellationToken: stop).ConfigureAwait(false);
                if (!beat.Known)
                {
                    if (Volatile.Read(ref left) != 0) break;
                    health.Set(WorkerHost.ReadinessService, false);
                    log.LogWarning("coordinator does not know worker {WorkerId}; registering again", identity.WorkerId);
                    identity.WorkerId = null;
                    await state.ReleaseAsync("coordinator forgot this worker").ConfigureAwait(false);
                    continue;
                }
                if (beat.Cordoned != identity.Cordoned)
                {
                    identity.Cordoned = beat.Cordoned;
                    if (beat.Cordoned) log.LogInformation("cordoned by the coordinator: takes no new job (`dtrain workers uncordon {WorkerId}` undoes it)", identity.WorkerId);
                    else log.LogInformation("uncordoned: {WorkerId} takes jobs again", identity.WorkerId);
                }
                health.Set(WorkerHost.ReadinessService, Volatile.Read(ref left) == 0);
                delay = TimeSpan.FromMilliseconds(200);
                await Task.Delay(interval, stop).ConfigureAwait(false);
            }
            catch (RpcException e) when (!stop.IsCancellationRequested && e.StatusCode is StatusCode.AlreadyExists or StatusCode.ResourceExhausted or StatusCode.InvalidArgument or StatusCode.PermissionDenied or StatusCode.FailedPrecondition)
            {
                // Refused, not unreachable: say why. A name held by a worker that is then lost, or a full cluster that
                // gets room, admits it later, so keep trying.
                log.LogError("coordinator {Coordinator} refused to register this worker: {Detail}; retrying in {Delay}", options.Coordinator, e.Status.Detail, delay);
                await Task.Delay(delay, stop).ConfigureAwait(false);
                delay = TimeSpan.FromMilliseconds(Math.Min(5000, delay.TotalMilliseconds * 2));
            }
            catch (RpcException e) when (!stop.IsCancellationRequested)
            {
                if (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
                    log.LogWarning("coordinator {Coordinator} unreachable ({Status}); retrying in {Delay}", options.Coordinator, e.StatusCode, delay);
                else
                    log.LogError("coordinator {Coordinator} refused this worker: {Status}: {Detail}; retrying in {Delay}", options.Coordinator, e.StatusCode, e.Status.Detail, delay);
                await Task.Delay(delay, stop).ConfigureAwait(false);
                delay = TimeSpan.FromMilliseconds(Math.Min(5000, delay.TotalMilliseconds * 2));
            }
        }
    }

    /// <summary>Tells the coordinator this worker leaves (once); heartbeats stop, so it is not registered again.</summary>
    public async Task LeaveAsync(string reason)
    {
        if (Interlocked.Exchange(ref left, 1) != 0) return;
        health.Set(WorkerHost.ReadinessService, false);
        if (client is null || identity.WorkerId is not { } id) return;
        try
        {
            await client.LeaveAsync(new LeaveRequest { WorkerId = id, Token = identity.Token, Reason = reason }, deadline: DateTime.UtcNow.AddSeconds(options.CoordinatorCallTimeoutSeconds)).ConfigureAwait(false);
            log.LogInformation("left coordinator {Coordinator} as {WorkerId}: {Reason}", options.Coordinator, id, reason);
        }
        catch (RpcException e)
        {
            // The coordinator will declare this worker lost when heartbeats stop.
            log.LogWarning("could not tell coordinator {Coordinator} that {WorkerId} leaves ({Status}); it will notice missing heartbeats", options.Coordinator, id, e.StatusCode);
        }
    }

    public Task StoppingAsync(CancellationToken cancellationToken)
    {
        const string reason = "worker shutting down";
        return state.DrainAsync(TimeSpan.FromSeconds(options.DrainTimeoutSeconds), () => LeaveAsync(reason), reason);
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override void Dispose()
    {
        lock (channels)
        {
            foreach (var c in channels) c.Dispose();
            channels.Clear();
        }
        key.Dispose();
        base.Dispose();
    }
}
