namespace Dtrain.Collective;

/// <summary>
/// Pieces from the left-hand neighbour of one ring (one job generation) — or, for a pipeline stage link, from the one
/// sending stage of that channel (<paramref name="sender"/>, <paramref name="kind"/> = stage tensors) — waiting for
/// the local all-reduce (or stage) to ask for them by tag. Thread-safe. Memory is bounded by the algorithm: a neighbour can run at most W - 1 ring steps ahead of
/// this worker within an operation, i.e. at most about one buffer's worth of pieces per concurrent operation.
/// </summary>
internal sealed class RingMailbox(string jobId, long generation, int rank, int worldSize, int? sender = null, PeerMessageKind kind = PeerMessageKind.AllReduce)
{
    private readonly Lock gate = new();
    private readonly Dictionary<RingTag, RingPiece> arrived = [];
    private readonly Dictionary<RingTag, TaskCompletionSource<RingPiece>> waiting = [];
    private readonly Dictionary<RingTag, RingLanding> landings = [];
    private Func<Exception, Exception> wrapLandingFailure = e => e;
    private bool inboundAttached;
    private Exception? inboundEnded;   // the left neighbour's stream is over: unmatched receives can never complete
    private Exception? closed;         // the ring is gone on this side: everything fails

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
        get { lock (gate) return this.closed; }
    }

    /// <summary>
    /// Set by a link reader that blocks on a socket read: breaks the link, so that a read straight into a landing being
    /// taken back (<see cref="Revoke"/>) stops at once.
    /// </summary>
    public Action? AbortInbound { get; set; }

    /// <summary>Claims the single inbound stream of this generation; false if one is (or was) attached already.</summary>
    public bool TryAttachInbound()
    {
        lock (gate)
        {
            if (inboundAttached || this.closed is not null) return false;
            inboundAttached = true;
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
        RingLanding? landing;
        lock (gate)
        {
            if (this.closed is not null)
            {
                piece.Dispose();
                throw new InvalidOperationException($"ring {JobId}/{Generation} is closed on rank {Rank}: {this.closed.Message}", this.closed);
            }
            landing = ClaimLocked(piece.Tag, blockingRead: false);
            if (landing is null && waiting.Remove(piece.Tag, out var waiter))
            {
                // Continuations run asynchronously, so completing under the lock is safe and keeps cancellation race-free.
                waiter.SetResult(piece);
                return;
            }
            if (landing is null && !arrived.TryAdd(piece.Tag, piece))
            {
                piece.Dispose();
                throw new InvalidDataException($"duplicate piece {piece.Tag} from rank {LeftRank}");
            }
        }
        if (landing is not null) Land(landing, piece);
    }

    /// <summary>Lands a piece on the calling thread (its bytes are not needed afterwards), then ends the claim.</summary>
    private void Land(RingLanding landing, RingPiece piece)
    {
        using (piece)
        {
            try
            {
                landing.Apply(piece.Bytes.Span, piece.Offset, piece.Pieces);
            }
            finally
            {
                Release(landing);
            }
        }
    }

    /// <summary>
    /// Takes the pieces of <paramref name="landings"/> as they come, landing each in place on the thread that brings it;
    /// pieces that came before are landed here. Failures of the link are wrapped by <paramref name="wrapFailure"/>.
    /// The caller must <see cref="Revoke"/> them before it lets go of the destinations.
    /// </summary>
    public void Expect(IReadOnlyList<RingLanding> landings, Func<Exception, Exception> wrapFailure)
    {
        var early = new List<(RingLanding Landing, RingPiece Piece)>();
        Exception? failure;
        lock (gate)
        {
            wrapLandingFailure = wrapFailure;
            failure = this.closed ?? inboundEnded;
            // All or nothing: a refused landing must not leave the others registered.
            foreach (var landing in landings)
                if (waiting.ContainsKey(landing.Tag) || this.landings.ContainsKey(landing.Tag)) throw new InvalidOperationException($"piece {landing.Tag} is already being received");
            foreach (var landing in landings)
            {
                if (arrived.Remove(landing.Tag, out var piece))
                {
                    landing.State = RingLanding.Claimed;
                    early.Add((landing, piece));
                }
                else if (failure is null) this.landings.Add(landing.Tag, landing);
                else landing.State = RingLanding.Ended;
            }
        }
        foreach (var (landing, piece) in early) Land(landing, piece);
        if (failure is not null)
            foreach (var landing in landings)
                if (!landing.Landed.IsCompleted) landing.Fail(wrapFailure(failure));
    }

    /// <summary>For a link reader: the landing waiting for this tag, now claimed (end it with <see cref="Release"/>), or null.</summary>
    public RingLanding? TryClaim(RingTag tag, bool blockingRead)
    {
        lock (gate) return ClaimLocked(tag, blockingRead);
    }

    private RingLanding? ClaimLocked(RingTag tag, bool blockingRead)
    {
        if (this.landings.Count == 0 || !this.landings.Remove(tag, out var landing)) return null;
        landing.State = RingLanding.Claimed;
        landing.BlockingRead = blockingRead;
        return landing;
    }

    /// <summary>A claimed landing's link broke while its piece was being read.</summary>
    public void Fail(RingLanding landing, Exception error)
    {
        Func<Exception, Exception> wrap;
        lock (gate) wrap = wrapLandingFailure;
        landing.Fail(wrap(new IOException($"stream from {SenderRole} rank {LeftRank} broke: {error.Message}", error)));
    }

    /// <summary>Ends a claim (the landing has landed or failed, or the reader gave up on it).</summary>
    public void Release(RingLanding landing)
    {
        lock (gate) landing.State = RingLanding.Ended;
    }

    /// <summary>
    /// Takes back the landings that have not landed: once this returns, nothing writes into their destinations. A landing
    /// being read straight from a socket is stopped by breaking the link (<see cref="AbortInbound"/>): the operation
    /// that gives up on it has failed, and the ring with it.
    /// </summary>
    public void Revoke(IReadOnlyList<RingLanding> landings)
    {
        var aborted = false;
        while (true)
        {
            var busy = false;
            Action? abort = null;
            lock (gate)
            {
                foreach (var landing in landings)
                {
                    if (landing.State == RingLanding.Pending)
                    {
                        this.landings.Remove(landing.Tag);
                        landing.State = RingLanding.Ended;
                    }
                    else if (landing.State == RingLanding.Claimed && !landing.Landed.IsCompleted)
                    {
                        // Being written (a claim whose piece has landed or failed only has its release to come).
                        busy = true;
                        if (landing.BlockingRead) abort = AbortInbound;
                    }
                }
            }
            if (!busy) break;
            if (abort is not null && !aborted)
            {
                aborted = true;
                abort();
            }
            Thread.Sleep(1);
        }
        var cancelled = new OperationCanceledException("the operation took back where its pieces were to land");
        foreach (var landing in landings)
            if (!landing.Landed.IsCompleted) landing.Fail(cancelled);
    }

    /// <summary>
    /// Hands the piece to a receiver already waiting for its tag and returns true; false (keeping nothing) when none
    /// waits. Lets a transport lend memory it must get back soon (a shared-memory slot) only to a consumer that is there.
    /// </summary>
    public bool TryHandToWaiter(RingPiece piece)
    {
        RingLanding? landing;
        lock (gate)
        {
            if (this.closed is not null) return false;
            landing = ClaimLocked(piece.Tag, blockingRead: false);
            if (landing is null)
            {
                if (!waiting.Remove(piece.Tag, out var waiter)) return false;
                waiter.SetResult(piece);
                return true;
            }
        }
        Land(landing, piece);
        return true;
    }

    /// <summary>Waits for the piece with this tag; the caller owns (and must dispose) the result.</summary>
    public async ValueTask<RingPiece> ReceiveAsync(RingTag tag, Func<Exception, Exception> wrapFailure, CancellationToken cancellationToken)
    {
        TaskCompletionSource<RingPiece> waiter;
        lock (gate)
        {
            if (arrived.Remove(tag, out var piece)) return piece;
            if (this.closed is not null) throw wrapFailure(this.closed);
            if (inboundEnded is not null) throw wrapFailure(inboundEnded);
            if (waiting.ContainsKey(tag)) throw new InvalidOperationException($"piece {tag} is already being received");
            waiter = new TaskCompletionSource<RingPiece>(TaskCreationOptions.RunContinuationsAsynchronously);
            waiting.Add(tag, waiter);
        }
        try
        {
            return await waiter.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            lock (gate)
            {
                if (waiting.TryGetValue(tag, out var current) && current == waiter) waiting.Remove(tag);
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
        List<RingLanding> landings;
        Func<Exception, Exception> wrap;
        lock (gate)
        {
            if (inboundEnded is not null) return;
            inboundEnded = reason;
            failed = [.. waiting.Values];
            waiting.Clear();
            (landings, wrap) = TakeLandingsLocked();
        }
        foreach (var waiter in failed) waiter.TrySetException(reason);
        foreach (var landing in landings) landing.Fail(wrap(reason));
    }

    private (List<RingLanding>, Func<Exception, Exception>) TakeLandingsLocked()
    {
        List<RingLanding> landings = [.. this.landings.Values];
        this.landings.Clear();
        foreach (var landing in landings) landing.State = RingLanding.Ended;
        return (landings, wrapLandingFailure);
    }

    /// <summary>The ring is over on this side (transport disposed, or superseded by a newer generation).</summary>
    public void Close(Exception reason)
    {
        List<TaskCompletionSource<RingPiece>> failed;
        List<RingPiece> dropped;
        List<RingLanding> landings;
        Func<Exception, Exception> wrap;
        lock (gate)
        {
            if (this.closed is not null) return;
            this.closed = reason;
            failed = [.. waiting.Values];
            dropped = [.. arrived.Values];
            waiting.Clear();
            arrived.Clear();
            (landings, wrap) = TakeLandingsLocked();
        }
        foreach (var waiter in failed) waiter.TrySetException(reason);
        foreach (var piece in dropped) piece.Dispose();
        foreach (var landing in landings) landing.Fail(wrap(reason));
    }
}
