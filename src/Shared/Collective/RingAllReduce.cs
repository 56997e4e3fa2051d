using System.Globalization;
using System.Numerics.Tensors;
using System.Runtime.ExceptionServices;

namespace Dtrain.Collective;

/// <summary>
/// Sum all-reduce over a ring of W workers: reduce-scatter (W - 1 steps) then all-gather (W - 1 steps). The buffer is
/// split into W contiguous chunks of near-equal size; at global step k (0 .. 2W - 3) rank r sends chunk (r - k) mod W
/// and receives chunk (r - k - 1) mod W, adding it during reduce-scatter and copying it during all-gather. Chunks
/// travel as pieces of at most <see cref="MaxPieceFloats"/> values, and the steps are pipelined per piece: piece p of
/// step k is forwarded as soon as piece p of step k - 1 has been received and reduced, so large buffers stream.
/// Each chunk's final sum is computed on exactly one rank (in a fixed order) and then copied, so every rank ends
/// with bit-identical values. Torch-free: plain floats.
/// </summary>
/// <remarks>
/// All ranks must call <see cref="SumAsync(Memory{float}, long, CancellationToken)"/> with the same operation id, buffer length and <see cref="MaxPieceFloats"/>.
/// Operations with distinct ids may run concurrently on the same transport. Not reentrant for the same operation id.
/// </remarks>
public sealed class RingAllReduce
{
    /// <summary>256K floats = 1 MiB per message.</summary>
    public const int DefaultMaxPieceFloats = 256 * 1024;

    /// <summary>Default per-operation timeout (it includes waiting for the slowest worker to arrive).</summary>
    public static readonly TimeSpan DefaultOperationTimeout = TimeSpan.FromMinutes(2);

    private readonly IRingTransport transport;

    public RingAllReduce(IRingTransport transport, int maxPieceFloats = DefaultMaxPieceFloats, TimeSpan? operationTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPieceFloats, 1);
        var timeout = operationTimeout ?? DefaultOperationTimeout;
        if (timeout <= TimeSpan.Zero && timeout != Timeout.InfiniteTimeSpan) throw new ArgumentOutOfRangeException(nameof(operationTimeout), "must be positive or infinite");
        this.transport = transport;
        MaxPieceFloats = maxPieceFloats;
        OperationTimeout = timeout;
    }

    public IRingTransport Transport => this.transport;

    public int Rank => this.transport.Rank;

    public int WorldSize => this.transport.WorldSize;

    /// <summary>Largest number of floats per message (all ranks must agree).</summary>
    public int MaxPieceFloats { get; }

    /// <summary>An operation that has not completed after this long fails with <see cref="CollectiveTimeoutException"/>.</summary>
    public TimeSpan OperationTimeout { get; }

    /// <summary>Optional: told where each operation on this rank waits (piece k of n, from which neighbour), for live diagnosis.</summary>
    public IRingProgress? Progress { get; set; }

    internal static string PhaseName(int phase) => phase switch { 0 => "reduce-scatter", 1 => "all-gather", _ => $"phase {phase}" };

    /// <summary>
    /// Replaces <paramref name="buffer"/> on every rank with the element-wise sum over all ranks. Does not divide.
    /// Throws <see cref="CollectiveTimeoutException"/> after <see cref="OperationTimeout"/>, <see cref="CollectiveException"/>
    /// when a neighbour fails, and <see cref="OperationCanceledException"/> (with the position in the message) when
    /// <paramref name="cancellationToken"/> fires. After a failure the buffer content is undefined.
    /// </summary>
    public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancellationToken = default) =>
        SumAsync(buffer, operation, RingCompression.None, cancellationToken);

    /// <summary>
    /// As <see cref="SumAsync(Memory{float}, long, CancellationToken)"/>, with the values travelling as
    /// <paramref name="compression"/> (16-bit numbers, added in fp32 on arrival). Each chunk's final sum is rounded to
    /// 16 bits on the rank that computed it before it is sent round, so every rank still ends with identical values.
    /// All ranks must pass the same <paramref name="compression"/>.
    /// </summary>
    public async Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancellationToken = default)
    {
        var world = WorldSize;
        cancellationToken.ThrowIfCancellationRequested();
        if (!Enum.IsDefined(compression)) throw new ArgumentOutOfRangeException(nameof(compression), compression, "unknown compression");
        if (world == 1 || buffer.IsEmpty) return;

        var op = new Op(this, buffer, operation, compression);
        using var timeout = new CancellationTokenSource(OperationTimeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        // Where the transport can, pieces land in place on the thread that receives them (no hop through this
        // operation's receive loop); else the receive loop takes each piece and lands it.
        var zone = op.ExpectLandings();
        var send = op.RunAsync(op.SendLoopAsync(linked.Token), linked);
        var receive = op.RunAsync(zone is null ? op.ReceiveLoopAsync(linked.Token) : op.AwaitLandingsAsync(zone, linked.Token), linked);
        try
        {
            await Task.WhenAll(send, receive).ConfigureAwait(false);
        }
        catch
        {
            // fall through: report the first real failure, not whichever task Task.WhenAll happens to rethrow
        }
        finally
        {
            // After this nothing writes into the buffer any more, whatever failed.
            zone?.Dispose();
        }
        Progress?.Done(operation);
        if (op.FirstFailure is null) return;

        if (op.FirstFailure is not OperationCanceledException) ExceptionDispatchInfo.Throw(op.FirstFailure);
        // Cancelled: say where we were stuck. The receive side is what waits on the ring; if it is done, the send side.
        var (position, direction, peer) = op.ReceiveDone
            ? (op.SendPosition, "sending to right neighbour", (Rank + 1) % world)
            : (op.ReceivePosition, "waiting for left neighbour", (Rank - 1 + world) % world);
        string Where(string what) =>
            $"ring all-reduce operation {operation} ({buffer.Length} floats, rank {Rank} of {world}) {what} in {PhaseName(position.Phase)} step {position.RingStep}/{world - 1} piece {position.Piece}, {direction} {this.transport.DescribeRank(peer)}";
        if (cancellationToken.IsCancellationRequested)
            throw new OperationCanceledException(Where("was cancelled"), op.FirstFailure, cancellationToken);
        throw new CollectiveTimeoutException(Where(string.Create(CultureInfo.InvariantCulture, $"timed out after {OperationTimeout.TotalSeconds:0.###} s")),
            operation, position.Phase, position.RingStep, position.Piece, peer, op.FirstFailure);
    }

    /// <summary>One operation in flight on this rank.</summary>
    private sealed class Op(RingAllReduce owner, Memory<float> buffer, long operation, RingCompression compression)
    {
        private readonly IRingTransport transport = owner.transport;
        private readonly int rank = owner.Rank;
        private readonly int world = owner.WorldSize;
        private readonly int maxPiece = owner.MaxPieceFloats;
        private readonly IRingProgress? progress = owner.Progress;
        private Exception? firstFailure;
        private RingLanding[] landings = [];   // every piece from the left, in the order it comes
        private int[][] landingIndex = [];     // [ring step][piece]: index in this.landings
        private int pending;
        private readonly TaskCompletionSource allLanded = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Exception? FirstFailure => Volatile.Read(ref firstFailure);

        public RingTag SendPosition { get; private set; }

        public RingTag ReceivePosition { get; private set; }

        public bool ReceiveDone { get; private set; }

        private int Steps => 2 * (this.world - 1);

        private int Mod(int x) => ((x % this.world) + this.world) % this.world;

        private (int Start, int Length) Chunk(int chunk)
        {
            var n = (long)buffer.Length;
            var start = chunk * n / this.world;
            var end = (chunk + 1) * n / this.world;
            return ((int)start, (int)(end - start));
        }

        private int PieceCount(int length) => (int)(((long)length + maxPiece - 1) / maxPiece);

        private RingTag TagOf(int step, int piece) =>
            step < this.world - 1 ? new RingTag(operation, 0, step, piece) : new RingTag(operation, 1, step - (this.world - 1), piece);

        /// <summary>A transport failure at <paramref name="tag"/>; the peer at fault is the one the transport names, if any.</summary>
        private CollectiveException Failed(RingTag tag, string doing, int neighbour, Exception ex)
        {
            var peer = ex is RingTransportException { PeerRank: >= 0 } transport ? transport.PeerRank : neighbour;
            return new CollectiveException(
                $"ring all-reduce operation {operation} (rank {this.rank} of {this.world}) failed in {PhaseName(tag.Phase)} step {tag.RingStep} piece {tag.Piece} while {doing} {this.transport.DescribeRank(neighbour)}: {ex.Message}",
                operation, tag.Phase, tag.RingStep, tag.Piece, peer, ex);
        }

        /// <summary>Records the first failure and stops the other loop.</summary>
        public async Task RunAsync(Task loop, CancellationTokenSource stopAll)
        {
            try
            {
                await loop.ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                // A transport error caused by our own cancellation (timeout / caller) counts as that cancellation.
                var failure = ex is OperationCanceledException or CollectiveException || !stopAll.IsCancellationRequested
                    ? ex
                    : new OperationCanceledException(ex.Message, ex, stopAll.Token);
                Interlocked.CompareExchange(ref firstFailure, failure, null);
                try { await stopAll.CancelAsync().ConfigureAwait(false); } catch (ObjectDisposedException) { }
                throw;
            }
        }

        private int Left => Mod(this.rank - 1);

        /// <summary>A piece from the left that does not fit where it should land: ranks disagree on the layout.</summary>
        private CollectiveException Mismatch(RingTag tag, long offset, int bytes, int pieces, long expectedOffset, int count, int expectedPieces) => new(
            $"ring all-reduce operation {operation} (rank {this.rank} of {this.world}): {tag} from left neighbour {this.transport.DescribeRank(Left)} covers [{offset}, {bytes} bytes) of {pieces} pieces, expected [{expectedOffset}, +{count} values = {WireCodec.EncodedBytes(compression, count)} bytes) of {expectedPieces}; do all ranks use the same buffer length ({buffer.Length}), max piece size ({maxPiece}) and gradient compression ({compression})?",
            operation, tag.Phase, tag.RingStep, tag.Piece, Left);

        /// <summary>Why a piece could not land, as this operation reports it.</summary>
        private CollectiveException ReceiveFailure(RingLanding landing, Exception failure) => failure is RingLandingMismatchException m
            ? Mismatch(landing.Tag, m.Offset, m.Bytes, m.Pieces, landing.Offset, landing.Destination.Length, landing.Pieces)
            : Failed(landing.Tag, "receiving from left neighbour", Left, failure);

        /// <summary>The pieces this rank sends (or receives), in order: ring step by ring step, each chunk's pieces in turn.</summary>
        private List<(int Step, int Piece)> Order(bool receive)
        {
            var order = new List<(int, int)>();
            for (var step = 0; step < Steps; step++)
                for (var p = 0; p < PieceCount(Chunk(Mod(this.rank - step - (receive ? 1 : 0))).Length); p++)
                    order.Add((step, p));
            return order;
        }

        /// <summary>
        /// Where every piece from the left lands; handed to the transport, which lands them as they come (the zone), or
        /// null when it cannot: the receive loop lands them then.
        /// </summary>
        public RingLandingZone? ExpectLandings()
        {
            var order = Order(receive: true);
            var landings = new RingLanding[order.Count];
            landingIndex = new int[Steps][];
            for (var step = 0; step < Steps; step++) landingIndex[step] = new int[PieceCount(Chunk(Mod(this.rank - step - 1)).Length)];
            for (var i = 0; i < order.Count; i++)
            {
                var (step, p) = order[i];
                var (start, length) = Chunk(Mod(this.rank - step - 1));
                var offset = start + p * maxPiece;
                var count = Math.Min(maxPiece, length - p * maxPiece);
                landingIndex[step][p] = i;
                // Reduce-scatter adds; the rank that computes a chunk's final sum (step W - 2) rounds it for the wire; all-gather copies.
                landings[i] = new RingLanding(TagOf(step, p), offset, PieceCount(length), buffer.Slice(offset, count), add: step < this.world - 1, compression, round: step == this.world - 2, OnLanded);
            }
            this.landings = landings;
            pending = landings.Length;
            ReceivePosition = landings[0].Tag;
            var zone = this.transport.Expect(landings);
            // Later pieces are reported as the one before lands (OnLanded).
            if (!landings[0].Landed.IsCompleted) progress?.Waiting(operation, ReceivePosition.Phase, ReceivePosition.RingStep + 1, this.world - 1, 1, landings.Length, Left);
            return zone;
        }

        private int IndexOf(RingTag tag) => landingIndex[tag.Phase == 0 ? tag.RingStep : this.world - 1 + tag.RingStep][tag.Piece];

        /// <summary>A piece landed (or cannot): on the thread that landed it, so keep it short.</summary>
        private void OnLanded(RingLanding landing, Exception? failure)
        {
            if (failure is not null)
            {
                allLanded.TrySetException(ReceiveFailure(landing, failure));
                return;
            }
            if (Interlocked.Decrement(ref pending) == 0)
            {
                ReceiveDone = true;
                allLanded.TrySetResult();
                return;
            }
            var next = IndexOf(landing.Tag) + 1;
            if (next < this.landings.Length && !this.landings[next].Landed.IsCompleted)
            {
                var tag = this.landings[next].Tag;
                ReceivePosition = tag;
                progress?.Waiting(operation, tag.Phase, tag.RingStep + 1, this.world - 1, next + 1, this.landings.Length, Left);
            }
        }

        /// <summary>The receive side when pieces land in place: wait for the last, or the first failure, or a broken link.</summary>
        public async Task AwaitLandingsAsync(RingLandingZone zone, CancellationToken cancellationToken)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, zone.Broken);
            try
            {
                await allLanded.Task.WaitAsync(linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested && zone.BrokenFailure() is { } broken)
            {
                throw Failed(ReceivePosition, "receiving from left neighbour", Left, broken);
            }
        }

        /// <summary>Sends step by step; from step 1 on, each piece waits until what it forwards has landed.</summary>
        public async Task SendLoopAsync(CancellationToken cancellationToken)
        {
            await Task.Yield();
            foreach (var (step, p) in Order(receive: false))
            {
                var (start, length) = Chunk(Mod(this.rank - step));
                var pieces = PieceCount(length);
                var tag = TagOf(step, p);
                SendPosition = tag;
                // Step k forwards what step k - 1 received into the same chunk: wait until that piece is reduced.
                if (step > 0)
                {
                    var landing = this.landings[landingIndex[step - 1][p]];
                    if (!landing.Landed.IsCompletedSuccessfully)
                    {
                        await landing.Landed.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
                        cancellationToken.ThrowIfCancellationRequested();
                        // The receive side reports why (the same failure); stop sending.
                        if (!landing.Landed.IsCompletedSuccessfully) throw ReceiveFailure(landing, landing.Landed.Exception!.InnerException!);
                    }
                }
                var offset = start + p * maxPiece;
                var count = Math.Min(maxPiece, length - p * maxPiece);
                // Zero-copy: this region is not written again before the piece has reached the right neighbour
                // (the next write to it is the all-gather copy W - 1 steps later, which causally depends on it).
                using var piece = compression == RingCompression.None
                    ? RingPiece.Borrow(tag, offset, pieces, buffer.Slice(offset, count))
                    : WireCodec.Encode(compression, tag, offset, pieces, buffer.Span.Slice(offset, count));
                try
                {
                    await this.transport.SendAsync(piece, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (!cancellationToken.IsCancellationRequested)
                {
                    throw Failed(tag, "sending to right neighbour", Mod(this.rank + 1), ex);
                }
            }
        }

        /// <summary>The receive side when the transport cannot land pieces: take each in turn and land it here.</summary>
        public async Task ReceiveLoopAsync(CancellationToken cancellationToken)
        {
            await Task.Yield();
            foreach (var landing in this.landings)
            {
                RingPiece piece;
                try
                {
                    piece = await this.transport.ReceiveAsync(landing.Tag, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (!cancellationToken.IsCancellationRequested)
                {
                    throw Failed(landing.Tag, "receiving from left neighbour", Left, ex);
                }
                using (piece) landing.Apply(piece.Bytes.Span, piece.Offset, piece.Pieces);
                if (landing.Landed.Exception is { } failed) throw ReceiveFailure(landing, failed.InnerException!);
            }
        }
    }

    /// <summary>
    /// destination[i] += source[i] with <see cref="TensorPrimitives.Add(ReadOnlySpan{float}, ReadOnlySpan{float}, Span{float})"/>
    /// (AVX-512/AVX2/SSE as the CPU has): element-wise IEEE adds, so vectorisation does not change the result.
    /// </summary>
    internal static void Add(Span<float> destination, ReadOnlySpan<float> source) =>
        TensorPrimitives.Add(destination, source[..destination.Length], destination);
}

/// <summary>Where a ring all-reduce on this rank waits, reported as it goes (<see cref="RingAllReduce.Progress"/>); called from the operation's receive loop, so keep it cheap.</summary>
public interface IRingProgress
{
    /// <summary>Operation <paramref name="operation"/> waits for piece <paramref name="piece"/> (from 1) of <paramref name="pieces"/> (over the whole operation), in phase <paramref name="phase"/> (0 = reduce-scatter, 1 = all-gather) ring step <paramref name="ringStep"/> of <paramref name="ringSteps"/>, from rank <paramref name="peerRank"/>.</summary>
    void Waiting(long operation, int phase, int ringStep, int ringSteps, int piece, int pieces, int peerRank);

    /// <summary>Operation <paramref name="operation"/> ended (completed or failed).</summary>
    void Done(long operation);
}

/// <summary>A collective operation failed; says which operation, where in it, and which neighbour was involved.</summary>
public class CollectiveException(string message, long operation, int phase, int ringStep, int piece, int peerRank, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>The operation id passed to <see cref="RingAllReduce.SumAsync(Memory{float}, long, CancellationToken)"/>.</summary>
    public long Operation { get; } = operation;

    /// <summary>0 = reduce-scatter, 1 = all-gather.</summary>
    public int Phase { get; } = phase;

    /// <summary>Ring step inside the phase, 0 .. W - 2.</summary>
    public int RingStep { get; } = ringStep;

    /// <summary>Piece index inside the chunk of that step.</summary>
    public int Piece { get; } = piece;

    /// <summary>The neighbour at fault: the one the transport blamed, else the one being waited for (left) or sent to (right).</summary>
    public int PeerRank { get; } = peerRank;
}

/// <summary>A collective operation did not complete within its timeout (a worker never arrived or the ring stalled).</summary>
public sealed class CollectiveTimeoutException(string message, long operation, int phase, int ringStep, int piece, int peerRank, Exception? inner = null)
    : CollectiveException(message, operation, phase, ringStep, piece, peerRank, inner);
