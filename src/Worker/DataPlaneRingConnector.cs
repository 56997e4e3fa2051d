using Dtrain.Cluster;
using Dtrain.Collective;
using Dtrain.Distributed;
using Dtrain.Rpc;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>
/// Joins a job's ring with the transport <see cref="WorkerOptions.Transport"/> names (auto = shared memory to a
/// neighbour on this host, TCP to one elsewhere; or shm, tcp, grpc), negotiated with the right-hand neighbour through
/// the gRPC control plane (<see cref="DataPlane"/>), and logs the choice ("ring w1->w2: shared memory").
/// </summary>
public sealed class DataPlaneRingConnector : IRingConnector
{
    private readonly DataPlane dataPlane;
    private readonly WorkerOptions options;
    private readonly WorkerSecurity security;
    private readonly ILogger<DataPlaneRingConnector>? logger;

    public DataPlaneRingConnector(DataPlane dataPlane, WorkerOptions options, WorkerSecurity security, ILogger<DataPlaneRingConnector>? logger = null)
    {
        this.dataPlane = dataPlane;
        this.options = options;
        this.security = security;
        this.logger = logger;
        // With cluster TLS the TCP listener speaks TLS from its first connection on.
        if (security.Tls is { } tls) dataPlane.Tls ??= tls;
    }

    public async Task<RingConnection> ConnectAsync(RingMembership membership, CancellationToken cancel)
    {
        if (membership.World == 1) return new RingConnection(LocalReducer.Instance);
        var peers = membership.Peers.OrderBy(p => p.Rank).ToList();
        var addresses = peers.Select(p => p.Address).ToList();
        // With TLS each neighbour is who the coordinator says (its worker id and issued certificate), not who it claims.
        var ringSecurity = security.Tls is { } tls ? new RingSecurity(tls, [.. peers.Select(p => ExpectedPeer.Worker(p.WorkerId, p.CertificateSha256))]) : null;
        IRingTransport transport;
        try
        {
            transport = await dataPlane.ConnectRingAsync(membership.JobId, membership.Generation, membership.Rank, membership.World, addresses, options.DataTransport,
                TimeSpan.FromSeconds(options.RingConnectTimeoutSeconds), ringSecurity, cancel).ConfigureAwait(false);
        }
        catch (RingTransportException e)
        {
            throw new RingTransportException($"{e.Message} (gave up after Worker:RingConnectTimeoutSeconds = {options.RingConnectTimeoutSeconds:0.###} s)", e.PeerRank, e.Peer, e);
        }
        var right = (membership.Rank + 1) % membership.World;
        var kind = transport is PeerRingTransport mesh ? mesh.Peers.LinkTo(right) : DataTransports.Describe(DataTransport.Grpc, ringSecurity is not null);
        logger?.LogInformation("ring {From}->{To}: {Kind} (job {Job} generation {Generation}, Worker:Transport = {Option})",
            Name(peers, membership.Rank), Name(peers, right), kind, membership.JobId, membership.Generation, options.Transport);
        var ring = new RingAllReduce(transport, operationTimeout: TimeSpan.FromSeconds(options.CollectiveTimeoutSeconds));
        // Every rank takes part in forming the group (two tiny sums on the ring), whether or not it can join it.
        SharedMemoryAllReduce? group;
        string? whyNot;
        try
        {
            using var formTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            formTimeout.CancelAfter(TimeSpan.FromSeconds(options.RingConnectTimeoutSeconds));
            (group, whyNot) = await SharedMemoryAllReduce.FormAsync(ring, options.SharedMemoryGroup, kind == DataTransports.Describe(DataTransport.Shm),
                GroupSetupOperation, TimeSpan.FromSeconds(options.CollectiveTimeoutSeconds), cancel: formTimeout.Token, peerSilentAfter: options.CollectiveTimeouts.PeerSilentAfter).ConfigureAwait(false);
        }
        catch (Exception e) when (e is CollectiveException or OperationCanceledException && !cancel.IsCancellationRequested)
        {
            await transport.DisposeAsync().ConfigureAwait(false);
            var peer = e is CollectiveException c ? c.PeerRank : -1;
            throw new RingTransportException($"ring of job {membership.JobId} generation {membership.Generation} connected but its ranks did not agree on the all-reduce (Worker:RingConnectTimeoutSeconds = {options.RingConnectTimeoutSeconds:0.###} s): {e.Message}",
                peer, peer >= 0 ? transport.DescribeRank(peer) : "", e);
        }
        if (group is not null)
        {
            logger?.LogInformation("all-reduce of job {Job} generation {Generation}: shared-memory group of {World} workers on this host (no ring; {SlotMiB} MiB blocks)",
                membership.JobId, membership.Generation, membership.World, group.SlotFloats * sizeof(float) >> 20);
            void Registered(int floats, RegisteredBuffer? buffer)
            {
                if (buffer is not null)
                    logger?.LogInformation("gradient buffer of job {Job} generation {Generation}: {Floats} values registered with the shared-memory group (sums are zero-copy)",
                        membership.JobId, membership.Generation, floats);
                else
                    logger?.LogWarning("gradient buffer of job {Job} generation {Generation}: a rank could not make or map a {MiB} MiB buffer in /dev/shm; sums copy through the group's blocks",
                        membership.JobId, membership.Generation, (long)floats * sizeof(float) >> 20);
            }
            return new RingConnection(new SharedMemoryGroupReducer(group, ring, Registered), async () =>
            {
                await group.DisposeAsync().ConfigureAwait(false);
                await transport.DisposeAsync().ConfigureAwait(false);
            });
        }
        logger?.LogInformation("all-reduce of job {Job} generation {Generation}: ring (no shared-memory group: {Reason})", membership.JobId, membership.Generation, whyNot);
        return new RingConnection(new RingReducer(ring, ShortName(kind)), () => transport.DisposeAsync());
    }

    /// <summary>The ring operations that form the shared-memory group (training's operations count from 0).</summary>
    public const long GroupSetupOperation = -1000;

    /// <summary>The transport's name for metrics labels and the live phase: shm, tcp, tcp+tls, grpc, grpc+tls.</summary>
    private static string ShortName(string? kind) => kind switch
    {
        null => "unknown",
        "shared memory" => "shm",
        _ => kind,
    };

    private static string Name(List<ClusterPeer> peers, int rank) => rank < peers.Count && !string.IsNullOrEmpty(peers[rank].WorkerId) ? peers[rank].WorkerId : $"rank {rank}";

}
