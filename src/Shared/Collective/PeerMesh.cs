namespace Dtrain.Collective;

/// <summary>
/// A point-to-point transport made of per-peer links: outbound links this worker opened, and inbound mailboxes that
/// the links of other workers fill (through <see cref="DataPlane"/>, or the gRPC <see cref="CollectiveService"/>).
/// </summary>
internal sealed class PeerMesh(int rank, int worldSize, string[] peers, IReadOnlyDictionary<int, IOutboundLink> outbound,
    IReadOnlyDictionary<int, RingMailbox> inbound, Func<ValueTask> leave) : IPeerTransport
{
    private int disposed;

    public int Rank { get; } = rank;

    public int WorldSize { get; } = worldSize;

    public string DescribeRank(int rank) => rank >= 0 && rank < peers.Length ? $"rank {rank} ({peers[rank]})" : $"rank {rank}";

    public string? LinkTo(int peer) => outbound.TryGetValue(peer, out var link) ? link.Kind : null;

    public async ValueTask SendAsync(int peer, RingPiece piece, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(piece);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        if (!outbound.TryGetValue(peer, out var link)) throw new InvalidOperationException($"rank {Rank} has no link to {DescribeRank(peer)}");
        try
        {
            await link.SendAsync(piece, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not (RingTransportException or OperationCanceledException))
        {
            throw new RingTransportException($"{link.Kind} link to {DescribeRank(peer)} failed: {ex.Message}", peer, DescribeRank(peer), ex);
        }
    }

    /// <summary>
    /// Waits for the piece; fails as soon as any outbound link of this worker breaks too (as the gRPC ring does): in a
    /// ring, a dead right neighbour means the operation cannot finish, whatever the left one still sends.
    /// </summary>
    public async ValueTask<RingPiece> ReceiveAsync(int peer, RingTag tag, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        if (!inbound.TryGetValue(peer, out var mailbox)) throw new InvalidOperationException($"rank {Rank} has no link from {DescribeRank(peer)}");
        ThrowIfBroken();
        using var linked = CancellationTokenSource.CreateLinkedTokenSource([cancellationToken, .. outbound.Values.Select(l => l.Broken)]);
        try
        {
            return await mailbox.ReceiveAsync(tag, ex => new RingTransportException($"cannot receive {tag} from {DescribeRank(peer)}: {ex.Message}", peer, DescribeRank(peer), ex), linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            ThrowIfBroken();
            throw;
        }
    }

    /// <summary>Pieces from <paramref name="peer"/> land where the caller says; the zone is broken as soon as any outbound link of this worker breaks (see <see cref="ReceiveAsync"/>).</summary>
    public RingLandingZone? Expect(int peer, IReadOnlyList<RingLanding> landings)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        if (!inbound.TryGetValue(peer, out var mailbox)) throw new InvalidOperationException($"rank {Rank} has no link from {DescribeRank(peer)}");
        mailbox.Expect(landings, ex => new RingTransportException($"cannot receive from {DescribeRank(peer)}: {ex.Message}", peer, DescribeRank(peer), ex));
        var broken = outbound.Count == 0 ? null : CancellationTokenSource.CreateLinkedTokenSource([.. outbound.Values.Select(l => l.Broken)]);
        return new RingLandingZone(() =>
        {
            mailbox.Revoke(landings);
            broken?.Dispose();
        }, broken?.Token ?? CancellationToken.None, BrokenFailure);
    }

    private RingTransportException? BrokenFailure()
    {
        foreach (var (rank, link) in outbound)
            if (link.Broken.IsCancellationRequested && link.Fault is { } fault)
                return new RingTransportException($"{link.Kind} link to {DescribeRank(rank)} failed: {fault.Message}", rank, DescribeRank(rank), fault);
        return null;
    }

    private void ThrowIfBroken()
    {
        if (BrokenFailure() is { } broken) throw broken;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        foreach (var link in outbound.Values) await link.DisposeAsync().ConfigureAwait(false);
        await leave().ConfigureAwait(false);
    }
}
