using Dtrain.Cluster;
using Dtrain.Collective;
using Dtrain.Distributed.Pipeline;
using Dtrain.Rpc;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>
/// Opens a pipeline stage's links to its neighbouring stages with the transport <see cref="WorkerOptions.Transport"/>
/// names — the same choice and negotiation as the ring's (<see cref="DataPlaneStageLinks.ConnectStageLinksAsync"/>: shared
/// memory to a stage on this host, TCP (TLS with cluster TLS) elsewhere; <c>grpc</c> = the StageLink streams,
/// <see cref="GrpcStageLinks"/>) — and logs the choice ("stage links w1->w2: shared memory, w1->w0: shared memory").
/// </summary>
public sealed class StageLinkConnector(DataPlane dataPlane, WorkerOptions options, WorkerSecurity security, StageMailboxes mailboxes, ILogger<StageLinkConnector>? logger = null) : IStageLinkConnector
{
    public async Task<IStageLinkSet> ConnectAsync(Assignment request, PipelineStageAssignment p, CancellationToken cancel)
    {
        var previous = p.Stage > 0 ? p.Previous?.Address ?? "" : null;
        var next = p.Stage < p.Stages - 1 ? p.Next?.Address ?? "" : null;
        var tls = security.Tls;
        var expectPrevious = Neighbour(p.Previous);
        var expectNext = Neighbour(p.Next);
        IStageLinkSet links;
        string described;
        if (options.DataTransport == DataTransport.Grpc)
        {
            links = new GrpcStageLinks(request.JobId, request.Generation, p.Replica, p.Stage, previous, next, mailboxes,
                security: tls is not null ? new StageLinkSecurity(tls, expectPrevious, expectNext) : null);
            described = Describe(request, p, stage => stage >= 0 && stage < p.Stages ? links.Transport : null);
        }
        else
        {
            if (tls is not null) dataPlane.Tls ??= tls;
            IPeerTransport peers;
            try
            {
                peers = await dataPlane.ConnectStageLinksAsync(request.JobId, request.Generation, p.Replica, p.Stage, p.Stages, previous, next, options.DataTransport,
                    TimeSpan.FromSeconds(options.RingConnectTimeoutSeconds), tls, expectPrevious, expectNext, cancel).ConfigureAwait(false);
            }
            catch (RingTransportException e)
            {
                throw new RingTransportException($"{e.Message} (gave up after Worker:RingConnectTimeoutSeconds = {options.RingConnectTimeoutSeconds:0.###} s)", e.PeerRank, e.Peer, e);
            }
            links = new PeerStageLinks(peers, request.JobId, dataPlane.Mailboxes.MaxPieceFloats);
            described = Describe(request, p, stage => stage >= 0 && stage < p.Stages ? peers.LinkTo(stage) : null);
        }
        logger?.LogInformation("stage links {Links} (job {Job} generation {Generation}, stage {Stage}/{Stages} of replica {Replica}, Worker:Transport = {Option})",
            described.Length == 0 ? "none" : described, request.JobId, request.Generation, p.Stage, p.Stages, p.Replica, options.Transport);
        return links;
    }

    /// <summary>"w1->w2: shared memory, w1->w0: tcp": each outbound link (next stage first) and how it travels.</summary>
    private static string Describe(Assignment request, PipelineStageAssignment p, Func<int, string?> kind) =>
        string.Join(", ", new[] { (Stage: p.Stage + 1, Peer: p.Next), (Stage: p.Stage - 1, Peer: p.Previous) }
            .Where(x => kind(x.Stage) is not null)
            .Select(x => $"{Self(request)}->{Name(x.Peer, x.Stage)}: {kind(x.Stage)}"));

    private static ExpectedPeer? Neighbour(ClusterPeer? peer) => peer is null || peer.WorkerId.Length == 0 ? null : ExpectedPeer.Worker(peer.WorkerId, peer.CertificateSha256);

    private static string Self(Assignment request) =>
        request.Peers.FirstOrDefault(x => x.Rank == request.Rank) is { WorkerId.Length: > 0 } me ? me.WorkerId : "this worker";

    private static string Name(ClusterPeer? peer, int stage) => peer is { WorkerId.Length: > 0 } ? peer.WorkerId : $"stage {stage}";
}
