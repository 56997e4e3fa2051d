using Dtrain.Collective;
using Dtrain.Distributed;
using Dtrain.Protos.Worker;
using Dtrain.Rpc;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Worker;

/// <summary>Joins a job's ring over gRPC: this worker pushes to its right-hand neighbour and receives from its left one through the collective service it hosts.</summary>
public sealed class GrpcRingConnector(RingMailboxes mailboxes, WorkerOptions options, WorkerSecurity security) : IRingConnector
{
    public static void AddServices(IServiceCollection services, WorkerOptions options) => services.AddDtrainCollective();

    public static void MapServices(WebApplication app) => app.MapDtrainCollective();

    public async Task<RingConnection> ConnectAsync(AssignRequest request, CancellationToken cancel)
    {
        if (request.WorldSize == 1) return new RingConnection(LocalReducer.Instance);
        var peers = request.Peers.OrderBy(p => p.Rank).ToList();
        var addresses = peers.Select(p => p.Address).ToList();
        // With TLS each neighbour is who the coordinator says (its worker id and issued certificate), not who it claims.
        var ringSecurity = security.Tls is { } tls ? new RingSecurity(tls, [.. peers.Select(p => ExpectedPeer.Worker(p.WorkerId, p.CertificateSha256))]) : null;
        GrpcRingTransport transport;
        try
        {
            transport = await GrpcRingTransport.ConnectAsync(request.JobId, request.Generation, request.Rank, request.WorldSize, addresses, mailboxes,
                TimeSpan.FromSeconds(options.RingConnectTimeoutSeconds), ringSecurity, cancel).ConfigureAwait(false);
        }
        catch (RingTransportException e)
        {
            throw new RingTransportException($"{e.Message} (gave up after Worker:RingConnectTimeoutSeconds = {options.RingConnectTimeoutSeconds:0.###} s)", e.PeerRank, e.Peer, e);
        }
        var ring = new RingAllReduce(transport, operationTimeout: TimeSpan.FromSeconds(options.CollectiveTimeoutSeconds));
        return new RingConnection(new RingReducer(ring, "grpc"), () => transport.DisposeAsync());
    }
}
