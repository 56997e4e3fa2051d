namespace Dtrain.Collective;

/// <summary>The ring over a point-to-point transport: send to rank + 1, receive from rank - 1.</summary>
public sealed class PeerRingTransport(IPeerTransport peers) : IRingTransport
{
    public IPeerTransport Peers { get; } = peers ?? throw new ArgumentNullException(nameof(peers));

    public int Rank => Peers.Rank;

    public int WorldSize => Peers.WorldSize;

    public string DescribeRank(int rank) => Peers.DescribeRank(rank);

    public ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken) => Peers.SendAsync((Rank + 1) % WorldSize, piece, cancellationToken);

    public ValueTask<RingPiece> ReceiveAsync(RingTag tag, CancellationToken cancellationToken) => Peers.ReceiveAsync((Rank - 1 + WorldSize) % WorldSize, tag, cancellationToken);

    public RingLandingZone? Expect(IReadOnlyList<RingLanding> landings) => Peers.Expect((Rank - 1 + WorldSize) % WorldSize, landings);

    public ValueTask DisposeAsync() => Peers.DisposeAsync();
}
