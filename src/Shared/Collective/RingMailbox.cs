namespace Dtrain.Collective;

/// <summary>
/// Pieces from the left-hand neighbour of one ring (one job generation) — or, for a pipeline stage link, from the one
/// sending stage of that channel (<paramref name="sender"/>, <paramref name="kind"/> = stage tensors) — waiting for
/// the local all-reduce (or stage) to ask for them by tag. Thread-safe. Memory is bounded by the algorithm: a neighbour can run at most W - 1 ring steps ahead of
/// this worker within an operation, i.e. at most about one buffer's worth of pieces per concurrent operation.
/// </summary>
internal sealed class RingMailbox(string jobId, long generation, int rank, int worldSize, int? sender = null, PeerMessageKind kind = PeerMessageKind.AllReduce)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<RingTag, RingPiece> _arrived = [];
    private readonly Dictionary<RingTag, TaskCompletionSource<RingPiece>> _waiting = [];
    private bool _inboundAttached;
    private Exception? _inboundEnded;   // the left neighbour's stream is over: unmatched receives can never complete
    private Exception? _closed;         // the ring is gone on this side: everything fails

    public string JobId { get; } = jobId;

    public long Generation { get; } = generation;

    public int Rank { get; } = rank;

    public int WorldSize { get; } = worldSize;

    /// <summary>The only rank whose link may fill this mailbox: the left neighbour in a ring, the given sender on a stage link.</summary>
    public int LeftRank { get; } = sender ?? (rank - 1 + worldSize) % worldSize;

    /// <summary>What the channel carries: all-reduce pieces, or stage tensors; frames of the other kind are refused.</summary>
    public PeerMessageKind Kind { get; } = kind;

    /// <summary>"left neighbour" in a ring, "sending stage" on a stage link (for refusals).</summary>
    public string SenderRole => Kind == PeerMessageKind.AllReduce ? "left neighbour" : "sending stage";

    /// <summary>With TLS: whose certificate the inbound stream must come with (the left neighbour's); null = not checked (plaintext).</summary>
    public Dtrain.Rpc.ExpectedPeer? ExpectedLeft { get; init; }

    /// <summary>Why the ring was closed on this side, or null while open.</summary>
    public Exception? ClosedReason
    {
        get { lock (_gate) return _closed; }
    }

    /// <summary>Claims the single inbound stream of this generation; false if one is (or was) attached already.</summary>
    public bool TryAttachInbound()
    {
        lock (_gate)
        {
            if (_inboundAttached || _closed is not null) return false;
            _inboundAttached = true;
            return true;
        }
    }

    /// <summary>Hands a piece to the waiting (or a future) receiver; the mailbox owns the piece from here on.</summary>
    public void Deliver(RingPiece piece)
    {
        if (piece.Tag.Kind != Kind)
        {
            piece.Dispose();
            throw new InvalidDataException($"{piece.Tag} from rank {LeftRank}: channel {JobId} carries {(Kind == PeerMessageKind.AllReduce ? "all-reduce pieces" : "stage tensors")} only");
        }
        lock (_gate)
        {
            if (_closed is not null)
            {
                piece.Dispose();
                throw new InvalidOperationException($"ring {JobId}/{Generation} is closed on rank {Rank}: {_closed.Message}", _closed);
            }
            if (_waiting.Remove(piece.Tag, out var waiter))
            {
                // Continuations run asynchronously, so completing under the lock is safe and keeps cancellation race-free.
                waiter.SetResult(piece);
                return;
            }
            if (!_arrived.TryAdd(piece.Tag, piece))
            {
                piece.Dispose();
                throw new InvalidDataException($"duplicate piece {piece.Tag} from rank {LeftRank}");
            }
        }
    }

    /// <summary>
    /// Hands the piece to a receiver already waiting for its tag and returns true; false (keeping nothing) when none
    /// waits. Lets a transport lend memory it must get back soon (a shared-memory slot) only to a consumer that is there.
    /// </summary>
    public bool TryHandToWaiter(RingPiece piece)
    {
        lock (_gate)
        {
            if (_closed is not null || !_waiting.Remove(piece.Tag, out var waiter)) return false;
            waiter.SetResult(piece);
            return true;
        }
    }

    /// <summary>Waits for the piece with this tag; the caller owns (and must dispose) the result.</summary>
    public async ValueTask<RingPiece> ReceiveAsync(RingTag tag, Func<Exception, Exception> wrapFailure, CancellationToken cancellationToken)
    {
        TaskCompletionSource<RingPiece> waiter;
        lock (_gate)
        {
            if (_arrived.Remove(tag, out var piece)) return piece;
            if (_closed is not null) throw wrapFailure(_closed);
            if (_inboundEnded is not null) throw wrapFailure(_inboundEnded);
            if (_waiting.ContainsKey(tag)) throw new InvalidOperationException($"piece {tag} is already being received");
            waiter = new TaskCompletionSource<RingPiece>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiting.Add(tag, waiter);
        }
        try
        {
            return await waiter.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            lock (_gate)
            {
                if (_waiting.TryGetValue(tag, out var current) && current == waiter) _waiting.Remove(tag);
            }
            // Delivered in the meantime: nobody will ever read it, release the buffer.
            if (waiter.Task.IsCompletedSuccessfully) waiter.Task.Result.Dispose();
            throw;
        }
        catch (Exception ex) when (ex is not RingTransportException)
        {
            throw wrapFailure(ex);
        }
    }

    /// <summary>The left neighbour's stream ended (cleanly if <paramref name="error"/> is null): fail all unmatched receives.</summary>
    public void CompleteInbound(Exception? error)
    {
        var reason = error is null
            ? new EndOfStreamException($"{SenderRole} rank {LeftRank} closed its stream")
            : new IOException($"stream from {SenderRole} rank {LeftRank} broke: {error.Message}", error);
        List<TaskCompletionSource<RingPiece>> failed;
        lock (_gate)
        {
            if (_inboundEnded is not null) return;
            _inboundEnded = reason;
            failed = [.. _waiting.Values];
            _waiting.Clear();
        }
        foreach (var waiter in failed) waiter.TrySetException(reason);
    }

    /// <summary>The ring is over on this side (transport disposed, or superseded by a newer generation).</summary>
    public void Close(Exception reason)
    {
        List<TaskCompletionSource<RingPiece>> failed;
        List<RingPiece> dropped;
        lock (_gate)
        {
            if (_closed is not null) return;
            _closed = reason;
            failed = [.. _waiting.Values];
            dropped = [.. _arrived.Values];
            _waiting.Clear();
            _arrived.Clear();
        }
        foreach (var waiter in failed) waiter.TrySetException(reason);
        foreach (var piece in dropped) piece.Dispose();
    }
}
