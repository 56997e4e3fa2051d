namespace Dtrain.Collective;

/// <summary>
/// The only thing <see cref="RingAllReduce"/> needs from the network: send pieces to the right-hand neighbour
/// (rank + 1 mod W) and receive pieces from the left-hand neighbour (rank - 1 mod W), matched by <see cref="RingTag"/>
/// so that pieces of concurrent operations may arrive in any order.
/// </summary>
public interface IRingTransport : IAsyncDisposable
{
    /// <summary>This worker's position in the ring, 0 .. <see cref="WorldSize"/> - 1.</summary>
    int Rank { get; }

    /// <summary>Number of workers in the ring (W).</summary>
    int WorldSize { get; }

    /// <summary>A human-readable name of a rank for error messages, e.g. "rank 2 (http://10.0.0.7:7001)".</summary>
    string DescribeRank(int rank) => $"rank {rank}";

    /// <summary>
    /// Sends a piece to the right-hand neighbour. The caller keeps ownership of the piece: when the returned task
    /// completes the transport no longer reads <see cref="RingPiece.Bytes"/>, so the caller may reuse that memory.
    /// Failures surface as <see cref="RingTransportException"/>.
    /// </summary>
    ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken);

    /// <summary>
    /// Receives the piece with this tag from the left-hand neighbour (waiting until it arrives). The caller owns the
    /// returned piece and must dispose it. Failures surface as <see cref="RingTransportException"/>.
    /// </summary>
    ValueTask<RingPiece> ReceiveAsync(RingTag tag, CancellationToken cancellationToken);

    /// <summary>
    /// Optional: takes where the pieces of one operation from the left-hand neighbour land (<see cref="RingLanding"/>),
    /// so that whichever thread receives one adds or copies it in place. Null when this transport cannot; the caller
    /// then receives with <see cref="ReceiveAsync"/>. The caller must dispose the zone before it lets go of the memory.
    /// </summary>
    RingLandingZone? Expect(IReadOnlyList<RingLanding> landings) => null;
}
