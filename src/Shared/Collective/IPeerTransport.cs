namespace Dtrain.Collective;

/// <summary>
/// Point-to-point messages between the workers of one (job, generation): send a piece to any rank, receive from any
/// rank by tag (pieces from one sender may arrive in any order; the tag matches them). The ring all-reduce runs over it
/// through <see cref="PeerRingTransport"/>; pipeline channels can use it the same way.
/// </summary>
public interface IPeerTransport : IAsyncDisposable
{
    /// <summary>This worker's rank, 0 .. <see cref="WorldSize"/> - 1.</summary>
    int Rank { get; }

    /// <summary>Number of workers.</summary>
    int WorldSize { get; }

    /// <summary>A rank for error messages, e.g. "rank 2 (http://10.0.0.7:7001)".</summary>
    string DescribeRank(int rank);

    /// <summary>How bytes to <paramref name="peer"/> travel ("shared memory", "tcp", ...), or null when this worker has no link to it.</summary>
    string? LinkTo(int peer);

    /// <summary>Sends a piece to <paramref name="peer"/>; the caller may reuse the piece's memory when this completes. Failures: <see cref="RingTransportException"/>.</summary>
    ValueTask SendAsync(int peer, RingPiece piece, CancellationToken cancellationToken);

    /// <summary>Receives the piece with this tag from <paramref name="peer"/> (the caller disposes it). Failures: <see cref="RingTransportException"/>.</summary>
    ValueTask<RingPiece> ReceiveAsync(int peer, RingTag tag, CancellationToken cancellationToken);

    /// <summary>Optional: where pieces from <paramref name="peer"/> land in place (see <see cref="IRingTransport.Expect"/>); null when this transport cannot.</summary>
    RingLandingZone? Expect(int peer, IReadOnlyList<RingLanding> landings) => null;
}
