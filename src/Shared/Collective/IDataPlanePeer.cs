using Dtrain.Rpc;

namespace Dtrain.Collective;

/// <summary>
/// The control calls a sender makes to the receiver it opens a link to (gRPC in production: <see cref="GrpcDataPlane"/>).
/// Refusals and failures surface as <see cref="DataPlaneRefusal"/>.
/// </summary>
internal interface IDataPlanePeer : IDisposable
{
    /// <summary>Announces this sender for (job, generation) and gets the receiver's offer.</summary>
    Task<DataPlaneLinkOffer> HelloAsync(string jobId, long generation, int sender, int worldSize, DateTimeOffset deadline, CancellationToken cancellationToken);

    /// <summary>Asks the receiver to map the shared-memory ring at <paramref name="path"/>.</summary>
    Task AttachSharedMemoryAsync(string jobId, long generation, int sender, string path, DateTimeOffset deadline, CancellationToken cancellationToken);
}

/// <summary>Opens the control connection to the receiver at an address (with TLS pinned to <paramref name="expected"/>).</summary>
internal delegate IDataPlanePeer DataPlanePeerFactory(string address, ClusterTls? tls, ExpectedPeer expected);
