using Dtrain.Cluster;
using Dtrain.Protos.Worker;

namespace Dtrain.Worker;

/// <summary>The worker's side of the protocol's wire form: WorkerControl's messages to the domain types (<see cref="Dtrain.Cluster"/>).</summary>
public static class WorkerProtocol
{
    public static ClusterPeer FromProto(Peer p) => new(p.Rank, p.WorkerId, p.Address, p.CertificateSha256);

    /// <summary>The ring an assignment joins: its rank among the peers of its generation.</summary>
    public static RingMembership Ring(AssignRequest r) =>
        new(r.JobId, r.Generation, r.Rank, r.WorldSize, [.. r.Peers.Select(FromProto)], r.StartStep);

    /// <summary>The ring of a new generation of an elastic job.</summary>
    public static RingMembership Ring(ReconfigureRequest r) =>
        new(r.JobId, r.Generation, r.Rank, r.WorldSize, [.. r.Peers.Select(FromProto)], r.NextStep);
}
