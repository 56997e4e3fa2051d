using Dtrain.Collective;
using Dtrain.Rpc;

namespace Dtrain.Distributed.Pipeline;

/// <summary>Pipeline stage links over the <see cref="DataPlane"/>: shared memory or TCP per directed stage pair, negotiated as a ring's links are.</summary>
public static class DataPlaneStageLinks
{
    /// <summary>
    /// Joins the pipeline stage links of (<paramref name="jobId"/>, <paramref name="generation"/>) as stage
    /// <paramref name="stage"/> of <paramref name="stages"/> in replica <paramref name="replica"/>: registers the inbound
    /// channels from the previous stage (activations) and the next stage (activation gradients), then opens this
    /// stage's outbound links to them with this worker's choice of <paramref name="transport"/> (shm, tcp or auto; the
    /// grpc flavour is <c>GrpcStageLinks</c>), negotiated exactly as a ring's link is (Hello, one-time token, TLS
    /// pinned to <paramref name="previous"/> / <paramref name="next"/>). Each directed link is its own channel
    /// (<see cref="StageChannels.Link"/>), fenced by generation like a ring. The result's ranks are stage indices.
    /// Failures: <see cref="RingTransportException"/> naming the neighbouring stage.
    /// </summary>
    public static async Task<IPeerTransport> ConnectStageLinksAsync(this DataPlane plane, string jobId, long generation, int replica, int stage, int stages, string? previousAddress, string? nextAddress,
        DataTransport transport, TimeSpan? connectTimeout = null, ClusterTls? tls = null, ExpectedPeer? previous = null, ExpectedPeer? next = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(plane);
        ArgumentException.ThrowIfNullOrEmpty(jobId);
        ArgumentOutOfRangeException.ThrowIfLessThan(stages, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(stage);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(stage, stages);
        ArgumentOutOfRangeException.ThrowIfNegative(replica);
        if (transport == DataTransport.Grpc) throw new ArgumentException("the grpc flavour of stage links is GrpcStageLinks (the StageLink streams)", nameof(transport));
        if ((stage > 0) != (previousAddress is not null)) throw new ArgumentException($"stage {stage} of {stages}: {(stage > 0 ? "needs" : "has no")} a previous stage address", nameof(previousAddress));
        if ((stage < stages - 1) != (nextAddress is not null)) throw new ArgumentException($"stage {stage} of {stages}: {(stage < stages - 1 ? "needs" : "has no")} a next stage address", nameof(nextAddress));
        if (tls is not null)
        {
            plane.Tls ??= tls;
            if ((previousAddress is not null && previous is null) || (nextAddress is not null && next is null))
                throw new ArgumentException($"stage {stage}: with TLS the identities of the neighbouring stages are required");
        }
        var timeout = connectTimeout ?? GrpcRingTransport.DefaultConnectTimeout;
        var scheme = tls is null ? "http://" : "https://";
        var peers = new string[stages];
        Array.Fill(peers, "");
        if (previousAddress is not null) peers[stage - 1] = previousAddress.Contains("://", StringComparison.Ordinal) ? previousAddress : scheme + previousAddress;
        if (nextAddress is not null) peers[stage + 1] = nextAddress.Contains("://", StringComparison.Ordinal) ? nextAddress : scheme + nextAddress;
        var inbound = new Dictionary<int, RingMailbox>();
        ValueTask Leave()
        {
            foreach (var mailbox in inbound.Values)
                plane.Mailboxes.Unregister(mailbox, new ObjectDisposedException(nameof(DataPlane), $"stage {stage} left the stage links of {jobId}/{generation} replica {replica}"));
            return ValueTask.CompletedTask;
        }
        var outbound = new Dictionary<int, IOutboundLink>();
        try
        {
            // Both inbound channels first: the neighbours' Hello finds them whatever order the stages connect in.
            if (previousAddress is not null)
                inbound[stage - 1] = plane.Mailboxes.Register(StageChannels.Link(jobId, replica, stage - 1, stage), generation, stage, stages, previous, stage - 1, PeerMessageKind.Tensor);
            if (nextAddress is not null)
                inbound[stage + 1] = plane.Mailboxes.Register(StageChannels.Link(jobId, replica, stage + 1, stage), generation, stage, stages, next, stage + 1, PeerMessageKind.Tensor);
            var opening = new List<Task<(int Peer, IOutboundLink Link)>>();
            async Task<(int, IOutboundLink)> Open(int peer, ExpectedPeer? expected, string what) =>
                (peer, await plane.OpenLinkAsync(StageChannels.Link(jobId, replica, stage, peer), generation, stage, stages, peer, peers[peer], transport, timeout, expected, tls,
                    $"the {what} link of {jobId}/{generation} replica {replica} from stage {stage} to the {(peer > stage ? "next" : "previous")} stage,", cancellationToken).ConfigureAwait(false));
            if (nextAddress is not null) opening.Add(Open(stage + 1, next, "activation"));
            if (previousAddress is not null) opening.Add(Open(stage - 1, previous, "gradient"));
            try
            {
                await Task.WhenAll(opening).ConfigureAwait(false);
            }
            catch
            {
                foreach (var t in opening.Where(t => t.IsCompletedSuccessfully)) await t.Result.Link.DisposeAsync().ConfigureAwait(false);
                throw opening.Select(t => t.Exception?.InnerException).OfType<RingTransportException>().FirstOrDefault()
                    ?? opening.Select(t => t.Exception?.InnerException).OfType<Exception>().First();
            }
            foreach (var t in opening) outbound[t.Result.Peer] = t.Result.Link;
            return new PeerMesh(stage, stages, peers, outbound, inbound, Leave);
        }
        catch
        {
            await Leave().ConfigureAwait(false);
            throw;
        }
    }
}
