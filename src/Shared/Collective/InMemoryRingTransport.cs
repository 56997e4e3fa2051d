namespace Dtrain.Collective;

/// <summary>
/// An in-process ring for tests: each send copies the piece into a pooled buffer and drops it into the right-hand
/// neighbour's mailbox. Disposing a transport closes its mailbox and ends the stream its right neighbour receives.
/// </summary>
public sealed class InMemoryRingTransport : IRingTransport
{
    private readonly RingMailbox mailbox;
    private readonly bool landings;
    private InMemoryRingTransport? right;
    private int disposed;

    private InMemoryRingTransport(int rank, int worldSize, bool landings)
    {
        mailbox = new RingMailbox("in-memory", 0, rank, worldSize);
        mailbox.TryAttachInbound();
        this.landings = landings;
    }

    /// <summary>
    /// W transports, element i being rank i, each sending to rank (i + 1) mod W. With <paramref name="landings"/>,
    /// pieces land in place as the data-plane links land them (<see cref="IRingTransport.Expect"/>); without, the
    /// operation receives them one by one.
    /// </summary>
    public static IReadOnlyList<InMemoryRingTransport> CreateRing(int worldSize, bool landings = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        var ring = Enumerable.Range(0, worldSize).Select(rank => new InMemoryRingTransport(rank, worldSize, landings)).ToArray();
        for (var rank = 0; rank < worldSize; rank++) ring[rank].right = ring[(rank + 1) % worldSize];
        return ring;
    }

    public int Rank => mailbox.Rank;

    public int WorldSize => mailbox.WorldSize;

    public string DescribeRank(int rank) => $"rank {rank}";

    public ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(piece);
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        var right = this.right!;
        try
        {
            right.mailbox.Deliver(RingPiece.CopyOf(piece.Tag, piece.Offset, piece.Pieces, piece.Bytes.Span));
        }
        catch (Exception ex) when (ex is InvalidOperationException or InvalidDataException)
        {
            throw new RingTransportException($"right neighbour rank {right.Rank} refused {piece.Tag}: {ex.Message}", right.Rank, DescribeRank(right.Rank), ex);
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask<RingPiece> ReceiveAsync(RingTag tag, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        var left = mailbox.LeftRank;
        return mailbox.ReceiveAsync(tag, ex => new RingTransportException($"cannot receive {tag} from left neighbour rank {left}: {ex.Message}", left, DescribeRank(left), ex), cancellationToken);
    }

    public RingLandingZone? Expect(IReadOnlyList<RingLanding> landings)
    {
        if (!this.landings) return null;
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        var left = mailbox.LeftRank;
        mailbox.Expect(landings, ex => new RingTransportException($"cannot receive from left neighbour rank {left}: {ex.Message}", left, DescribeRank(left), ex));
        return new RingLandingZone(() => mailbox.Revoke(landings), CancellationToken.None, () => null);
    }

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return ValueTask.CompletedTask;
        mailbox.Close(new ObjectDisposedException(nameof(InMemoryRingTransport), $"rank {Rank} left the ring"));
        this.right?.mailbox.CompleteInbound(null);
        return ValueTask.CompletedTask;
    }
}
