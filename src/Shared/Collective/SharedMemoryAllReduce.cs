using System.Collections.Concurrent;
using System.Globalization;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace Dtrain.Collective;

/// <summary>
/// Sum all-reduce among the workers of one host through shared memory, without a ring: every rank maps every other
/// rank's segment (a file in /dev/shm), so a block of the buffer is reduced in two barriers instead of 2(W - 1) ring
/// hand-offs — how MPI and NCCL reduce between local ranks. Per block (at most <see cref="SlotFloats"/> values):
/// each rank copies the parts it does not own into a slot of its segment; barrier; rank q sums part q reading the
/// other ranks' slots, writes the sum to its slot and its buffer; barrier; each rank copies the other parts' sums out of
/// their owners' slots. Two slots per segment alternate, so the next block's copy-in never overwrites a slot a peer
/// still reads (a block's slot is written again only after the barrier that every rank reaches after reading it).
/// A buffer made by <see cref="RegisterBufferAsync"/> skips the slots: every rank maps every other rank's buffer, and a
/// sum of a slice of it reads the peers' values in place (three barriers, no copy-in).
/// </summary>
/// <remarks>
/// Results are bit-identical to <see cref="RingAllReduce"/> over the same ranks: each value is summed in the ring's
/// order (its ring chunk c starts at rank c, then c + 1, ...), so switching between the group and the ring changes no
/// bit of training. Operations run one at a time in the order they are called, which must be the same on every rank
/// (it is checked: a rank that runs another operation fails all of them with a message saying so). Synchronisation:
/// a 32-bit arrival counter per rank, waited on with a shared Linux futex; a waiting rank re-checks its peers every
/// 20 ms (closed flag, process alive, heartbeat) as <see cref="SharedMemoryRing"/> does, so a dead peer fails the
/// operation with a <see cref="CollectiveException"/> naming it instead of hanging. After any failure the group is
/// unusable (its ranks are out of step) and every later operation fails at once; the membership change that follows
/// forms a new one.
/// </remarks>
public sealed partial class SharedMemoryAllReduce : IAsyncDisposable, SharedMemoryLiveness.IBeating
{
    private const long MagicValue = 0x3150524723544444;   // arbitrary, "DDT#GRP1"
    private const int HeaderBytes = 4096;
    private const int OffMagic = 0, OffRank = 8, OffWorld = 12, OffPid = 16, OffClosed = 20, OffPidNs = 24, OffBeat = 32,
        OffSlotFloats = 40, OffArrive = 128, OffOperation = 192, OffLength = 200, OffMode = 208, OffStart = 216,
        OffRegionId = 256, OffRegionFloats = 264, OffRegionState = 272, OffRegionMapped = 276;

    /// <summary><see cref="OffMode"/>: the sum copies the buffer through the slots, or works on the registered regions in place.</summary>
    private const long ModeCopy = 1, ModeRegistered = 2;

    /// <summary>Values summed at a time (16 KiB): the partial sum stays in L1/L2 across the W - 1 adds.</summary>
    private const int TileFloats = 4096;

    /// <summary>Values per slot unless told otherwise: 4M floats (16 MiB); a segment holds two slots.</summary>
    public const int DefaultSlotFloats = 4 << 20;

    private readonly Segment[] segments;
    private readonly int rank;
    private readonly int world;
    private readonly Func<int, string> describe;
    private readonly BlockingCollection<Request> queue = new();
    private readonly Thread thread;
    private readonly float[] tile = new float[TileFloats];
    private Exception? broken;
    private RegisteredBuffer? region;
    private SharedMemoryMapping[]? peerRegions;
    private long barrier;
    private long block;
    private int disposed;
    // Where operation deadlines and peer checks read the time.
    private readonly TimeProvider clock;

    private SharedMemoryAllReduce(Segment[] segments, int rank, int slotFloats, Func<int, string> describe, TimeSpan operationTimeout, TimeProvider clock)
    {
        this.clock = clock;
        this.segments = segments;
        this.rank = rank;
        this.world = segments.Length;
        SlotFloats = slotFloats;
        this.describe = describe;
        OperationTimeout = operationTimeout;
        SharedMemoryLiveness.Start(this);
        thread = new Thread(Run) { IsBackground = true, Name = $"dtrain shm all-reduce rank {rank}" };
        thread.Start();
    }

    public int Rank => this.rank;

    public int WorldSize => this.world;

    /// <summary>The segments' file names (for tests: none exists once the group is formed).</summary>
    internal IEnumerable<string> FilePaths => this.segments.Select(s => s.FilePath);

    /// <summary>Largest block reduced between two barriers.</summary>
    public int SlotFloats { get; }

    /// <summary>An operation not done this long after it was called fails with <see cref="CollectiveTimeoutException"/>.</summary>
    public TimeSpan OperationTimeout { get; }

    /// <summary>Optional: told which peer each operation waits for at a barrier, for live diagnosis.</summary>
    public IRingProgress? Progress { get; set; }

    /// <summary>
    /// Forms the group of a ring's ranks when every rank is willing and its right neighbour is on this host (its link is
    /// shared memory): a collective call — every rank of <paramref name="ring"/> must make it, whatever it brings —
    /// using two small sums on the ring (operations <paramref name="setupOperation"/> and the one after it) to agree and
    /// to exchange the segments' random names. Returns null (on every rank alike) when any rank cannot, with the reason in
    /// WhyNot. Segment files are deleted once every rank has mapped them.
    /// </summary>
    public static async Task<(SharedMemoryAllReduce? Group, string? WhyNot)> FormAsync(RingAllReduce ring, bool willing, bool rightIsLocal, long setupOperation,
        TimeSpan operationTimeout, int slotFloats = DefaultSlotFloats, CancellationToken cancel = default, TimeSpan? peerSilentAfter = null, TimeProvider? clock = null)
    {
        ArgumentNullException.ThrowIfNull(ring);
        ArgumentOutOfRangeException.ThrowIfLessThan(slotFloats, 1);
        var (rank, world) = (ring.Rank, ring.WorldSize);
        if (world < 2) return (null, "a world of one");
        const int Fields = 5;   // willing-and-able, then the segment's 64-bit id as four 16-bit values (exact as floats)
        Segment? own = null;
        string? reason = !willing ? "turned off (Worker:SharedMemoryGroup = false)"
            : !rightIsLocal ? "the link to the right-hand neighbour is not shared memory"
            : !(OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64) ? "needs Linux on x86-64"
            : null;
        if (reason is null)
        {
            try
            {
                own = Segment.Create(rank, world, slotFloats, peerSilentAfter);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                reason = $"cannot create a {SegmentBytes(slotFloats) >> 20} MiB segment in {SharedMemoryRing.Directory}: {e.Message}";
            }
        }
        var offer = new float[world * Fields];
        if (own is not null)
        {
            offer[rank * Fields] = 1;
            for (var i = 0; i < 4; i++) offer[rank * Fields + 1 + i] = (float)((own.Id >> (16 * i)) & 0xFFFF);
        }
        var segments = new Segment?[world];
        segments[rank] = own;
        try
        {
            await ring.SumAsync(offer, setupOperation, cancel).ConfigureAwait(false);
            var unable = Enumerable.Range(0, world).Where(r => offer[r * Fields] != 1).ToList();
            if (unable.Count > 0)
            {
                Release(segments);
                return (null, reason ?? $"{string.Join(", ", unable.Select(r => ring.Transport.DescribeRank(r)))} cannot (its neighbour is elsewhere, or it turned the group off)");
            }
            string? mapFailure = null;
            for (var r = 0; r < world && mapFailure is null; r++)
            {
                if (r == rank) continue;
                ulong id = 0;
                for (var i = 0; i < 4; i++) id |= (ulong)offer[r * Fields + 1 + i] << (16 * i);
                try
                {
                    segments[r] = Segment.Open(id, r, world, slotFloats, peerSilentAfter);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
                {
                    mapFailure = $"cannot map {ring.Transport.DescribeRank(r)}'s segment: {e.Message}";
                }
            }
            var mapped = new float[world];
            mapped[rank] = mapFailure is null ? 1 : 0;
            await ring.SumAsync(mapped, setupOperation + 1, cancel).ConfigureAwait(false);
            if (mapped.Any(m => m != 1))
            {
                Release(segments);
                return (null, mapFailure ?? "another rank could not map the segments");
            }
            // Every rank has mapped every segment: the names can go (the mappings stay valid; nothing outlives the processes).
            own!.DeleteFile();
            return (new SharedMemoryAllReduce(segments!, rank, slotFloats, ring.Transport.DescribeRank, operationTimeout, clock ?? TimeProvider.System), null);
        }
        catch
        {
            Release(segments);
            throw;
        }
    }

    private static void Release(Segment?[] segments)
    {
        foreach (var s in segments) s?.Dispose();
    }

    private static long SegmentBytes(int slotFloats) => HeaderBytes + 2L * slotFloats * sizeof(float);

    /// <summary>
    /// Replaces <paramref name="buffer"/> on every rank with the element-wise sum over all ranks (bit-identical to the
    /// ring's). Runs after the operations called before it on this rank. Failures: <see cref="CollectiveException"/>
    /// (a peer died, left or ran another operation), <see cref="CollectiveTimeoutException"/>, <see cref="OperationCanceledException"/>.
    /// </summary>
    public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        cancellationToken.ThrowIfCancellationRequested();
        if (buffer.IsEmpty) return Task.CompletedTask;
        return Enqueue(new Request(buffer, operation, cancellationToken, this.clock.GetTimestamp())).Done.Task;
    }

    /// <summary>
    /// A collective call (every rank, at the same place in its sequence of operations, with the same
    /// <paramref name="floats"/>): gives this rank a buffer of <paramref name="floats"/> values in shared memory that
    /// every other rank of the group maps. A sum of a slice of it (the same slice on every rank) is zero-copy: rank q sums
    /// part q straight from the peers' buffers into its own, then each rank copies the other parts' sums from their
    /// owners (no copy into slots first). Returns null on every rank alike when any rank cannot make or map one
    /// (/dev/shm full, ...); sums of other memory go through the slots as before. The caller owns the result and
    /// disposes it; the memory stays mapped until both the caller and this group have let it go.
    /// </summary>
    public async Task<RegisteredBuffer?> RegisterBufferAsync(int floats, long operation, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(floats, 1);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        var request = Enqueue(new Request(Memory<float>.Empty, operation, cancellationToken, this.clock.GetTimestamp()) { RegisterFloats = floats });
        await request.Done.Task.ConfigureAwait(false);
        return request.Registered;
    }

    private Request Enqueue(Request request)
    {
        try
        {
            queue.Add(request, CancellationToken.None);
        }
        catch (InvalidOperationException)
        {
            throw new ObjectDisposedException(nameof(SharedMemoryAllReduce));
        }
        return request;
    }

    private sealed record Request(Memory<float> Buffer, long Operation, CancellationToken Cancel, long Called)
    {
        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>Non-zero: a <see cref="RegisterBufferAsync"/> request of this many values.</summary>
        public int RegisterFloats { get; init; }

        public RegisteredBuffer? Registered { get; set; }
    }

    private void Run()
    {
        foreach (var request in queue.GetConsumingEnumerable())
        {
            if (this.broken is { } broken)
            {
                request.Done.TrySetException(new CollectiveException(
                    $"shared-memory all-reduce operation {request.Operation} (rank {this.rank} of {this.world}): the group failed earlier: {broken.Message}", request.Operation, 0, 0, 0, -1, broken));
                continue;
            }
            try
            {
                if (request.RegisterFloats > 0) Register(request);
                else if (MemoryMarshal.TryGetMemoryManager<float, RegisteredBuffer>(request.Buffer, out var registered, out var start, out var length)
                         && registered == region && peerRegions is not null)
                    SumRegistered(request, start, length);
                else Sum(request);
                request.Done.TrySetResult();
            }
            catch (Exception e)
            {
                this.broken = e;
                // Tell the peers at once: they fail their waits on us instead of waiting out a heartbeat.
                this.segments[this.rank].SetInt(OffClosed, 1);
                this.segments[this.rank].Wake();
                if (e is OperationCanceledException oce) request.Done.TrySetCanceled(oce.CancellationToken);
                else request.Done.TrySetException(e);
            }
            finally
            {
                Progress?.Done(request.Operation);
            }
        }
    }

    private void Sum(Request request)
    {
        var buffer = request.Buffer.Span;
        var n = buffer.Length;
        var op = request.Operation;
        var own = this.segments[this.rank];
        Publish(op, n, ModeCopy, 0);
        var blocks = (n + SlotFloats - 1) / SlotFloats;
        for (var b = 0; b < blocks; b++)
        {
            var start = b * SlotFloats;
            var length = Math.Min(SlotFloats, n - start);
            var slot = (int)(this.block++ & 1);
            // 1. The parts other ranks own, into this rank's slot (at the same place as in the buffer's block).
            for (var q = 0; q < this.world; q++)
            {
                if (q == this.rank) continue;
                var (ps, pl) = Part(length, q);
                NonTemporal.Copy(buffer.Slice(start + ps, pl), own.Slot(slot, ps, pl));
            }
            Barrier(request, phase: 0, b, blocks);
            if (b == 0) CheckSameOperation(op, n, ModeCopy, 0);
            // 2. This rank's part: summed in the ring's order, into its slot (where the others read it) and its buffer.
            {
                var (ps, pl) = Part(length, this.rank);
                var sum = own.Slot(slot, ps, pl);
                // Rank r's values at buffer index i: this rank's from its buffer, the others' from their slots (at i - start).
                RankValues values = (r, i, count) => r == this.rank ? request.Buffer.Span.Slice(i, count) : this.segments[r].Slot(slot, i - start, count);
                for (var at = 0; at < pl;)
                {
                    var tile = SumTile(start + ps + at, n, pl - at, values);
                    NonTemporal.Copy(tile, sum.Slice(at, tile.Length));
                    NonTemporal.Copy(tile, buffer.Slice(start + ps + at, tile.Length));
                    at += tile.Length;
                }
            }
            Barrier(request, phase: 1, b, blocks);
            // 3. The other parts' sums, from their owners' slots.
            for (var q = 0; q < this.world; q++)
            {
                if (q == this.rank) continue;
                var (ps, pl) = Part(length, q);
                NonTemporal.Copy(this.segments[q].Slot(slot, ps, pl), buffer.Slice(start + ps, pl));
            }
        }
        NonTemporal.Fence();
    }

    private void Publish(long op, int n, long mode, int start)
    {
        var own = this.segments[this.rank];
        own.SetLong(OffOperation, op);
        own.SetLong(OffLength, n);
        own.SetLong(OffMode, mode);
        own.SetLong(OffStart, start);
    }

    /// <summary>After the first barrier of an operation: every rank must be running the same one, the same way.</summary>
    private void CheckSameOperation(long op, int n, long mode, int start)
    {
        for (var r = 0; r < this.world; r++)
        {
            var peer = this.segments[r];
            if (peer.Long(OffOperation) == op && peer.Long(OffLength) == n && peer.Long(OffMode) == mode && peer.Long(OffStart) == start) continue;
            static string How(long m, long at) => m == ModeRegistered ? $"values at {at} of its registered buffer" : "values of its own memory";
            throw new CollectiveException(
                $"shared-memory all-reduce operation {op} ({n} {How(mode, start)}, rank {this.rank} of {this.world}): {this.describe(r)} runs operation {peer.Long(OffOperation)} ({peer.Long(OffLength)} {How(peer.Long(OffMode), peer.Long(OffStart))}) instead; every rank must call its sums in the same order with the same lengths (and register its buffer alike)",
                op, 0, 0, 0, r);
        }
    }

    /// <summary>
    /// <see cref="RegisterBufferAsync"/> on the group's thread: make and publish this rank's region; barrier; map the
    /// peers' (all or none); barrier; agree. Every rank returns the same answer.
    /// </summary>
    private void Register(Request request)
    {
        var floats = request.RegisterFloats;
        var own = this.segments[this.rank];
        ReleaseRegions();
        SharedMemoryMapping? mine = null;
        try
        {
            mine = SharedMemoryMapping.Create(".buf", (long)floats * sizeof(float));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        Publish(request.Operation, floats, 0, 0);
        own.SetLong(OffRegionFloats, floats);
        own.SetLong(OffRegionId, mine is null ? 0 : (long)mine.Id);
        own.SetInt(OffRegionState, mine is null ? -1 : 1);
        own.SetInt(OffRegionMapped, 0);
        Barrier(request, phase: 0, 0, 1);
        CheckSameOperation(request.Operation, floats, 0, 0);
        var peers = new SharedMemoryMapping?[this.world];
        var ok = mine is not null;
        for (var r = 0; r < this.world && ok; r++)
        {
            if (r == this.rank) continue;
            var peer = this.segments[r];
            if (peer.Int(OffRegionState) != 1 || peer.Long(OffRegionFloats) != floats)
            {
                ok = false;
                continue;
            }
            try
            {
                peers[r] = SharedMemoryMapping.Open(".buf", (ulong)peer.Long(OffRegionId), (long)floats * sizeof(float));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
            {
                ok = false;
            }
        }
        own.SetInt(OffRegionMapped, ok ? 1 : -1);
        Barrier(request, phase: 1, 0, 1);
        for (var r = 0; r < this.world; r++)
            if (this.segments[r].Int(OffRegionMapped) != 1) ok = false;
        // Every rank has mapped every region (or given up): the names can go.
        mine?.DeleteFile();
        if (!ok)
        {
            foreach (var m in peers) m?.Dispose();
            mine?.Dispose();
            return;
        }
        peerRegions = peers!;
        region = new RegisteredBuffer(mine!, floats);
        request.Registered = region;
    }

    private void ReleaseRegions()
    {
        if (peerRegions is { } peers)
            foreach (var m in peers) m?.Dispose();
        peerRegions = null;
        region?.Release();
        region = null;
    }

    /// <summary>
    /// Values [<paramref name="start"/>, +<paramref name="n"/>) of every rank's registered buffer, summed in place:
    /// barrier (every rank's values are there); rank q sums part q from all buffers into its own; barrier; each rank
    /// copies the other parts' sums from their owners; barrier (no rank still reads this rank's part when the caller
    /// writes the buffer again).
    /// </summary>
    private void SumRegistered(Request request, int start, int n)
    {
        var op = request.Operation;
        var own = region!.Span;
        Publish(op, n, ModeRegistered, start);
        Barrier(request, phase: 0, 0, 1);
        CheckSameOperation(op, n, ModeRegistered, start);
        {
            var (ps, pl) = Part(n, this.rank);
            RankValues values = (r, i, count) => Region(r).Slice(start + i, count);
            for (var at = 0; at < pl;)
            {
                var tile = SumTile(ps + at, n, pl - at, values);
                NonTemporal.Copy(tile, own.Slice(start + ps + at, tile.Length));
                at += tile.Length;
            }
        }
        Barrier(request, phase: 1, 0, 1);
        for (var q = 0; q < this.world; q++)
        {
            if (q == this.rank) continue;
            var (ps, pl) = Part(n, q);
            NonTemporal.Copy(Region(q).Slice(start + ps, pl), own.Slice(start + ps, pl));
        }
        Barrier(request, phase: 2, 0, 1);
    }

    /// <summary>Rank <paramref name="r"/>'s registered buffer.</summary>
    private Span<float> Region(int r) => r == this.rank ? region!.Span : peerRegions![r].Floats(region!.Length);

    /// <summary>Rank <paramref name="rank"/>'s values [<paramref name="index"/>, +<paramref name="count"/>) of the buffer being summed.</summary>
    private delegate ReadOnlySpan<float> RankValues(int rank, int index, int count);

    /// <summary>
    /// The sum over all ranks of values [<paramref name="i"/>, +run) of an <paramref name="n"/>-value buffer, where run is
    /// at most <paramref name="left"/> and one tile and stays inside i's ring chunk c: added x_c + x_(c+1) + ... as the
    /// ring does (so the result is the ring's, bit for bit), a tile at a time so the partial sum stays in cache between
    /// the adds and for the copies after. The result is this group's tile buffer, valid until the next call.
    /// </summary>
    private Span<float> SumTile(int i, int n, int left, RankValues values)
    {
        var chunk = ChunkOf(i, n);
        var run = (int)Math.Min(Math.Min(left, ChunkEnd(chunk, n) - i), TileFloats);
        var tile = this.tile.AsSpan(0, run);
        TensorPrimitives.Add(values((chunk + 1) % this.world, i, run), values(chunk, i, run), tile);
        for (var j = 2; j < this.world; j++) TensorPrimitives.Add(values((chunk + j) % this.world, i, run), tile, tile);
        return tile;
    }

    /// <summary>Part q of a block of <paramref name="length"/> values: W near-equal contiguous runs.</summary>
    private (int Start, int Length) Part(int length, int q)
    {
        var s = (int)((long)q * length / this.world);
        var e = (int)((long)(q + 1) * length / this.world);
        return (s, e - s);
    }

    /// <summary>The ring's chunk of value <paramref name="i"/> of <paramref name="n"/> (chunk c = [c n / W, (c + 1) n / W)).</summary>
    private int ChunkOf(int i, int n)
    {
        var c = (int)((long)i * this.world / n);
        while (c > 0 && (long)c * n / this.world > i) c--;
        while (c < this.world - 1 && (long)(c + 1) * n / this.world <= i) c++;
        return c;
    }

    private long ChunkEnd(int chunk, int n) => (long)(chunk + 1) * n / this.world;

    /// <summary>Arrives at the next barrier and waits until every peer has, checking that they are alive.</summary>
    private void Barrier(Request request, int phase, int block, int blocks)
    {
        // Non-temporal stores are weakly ordered: make the block's bytes visible before the peers are told they are there.
        NonTemporal.Fence();
        var target = ++barrier;
        var own = this.segments[this.rank];
        own.SetInt(OffArrive, (int)target);
        own.Wake();
        for (var r = 0; r < this.world; r++)
        {
            if (r == this.rank) continue;
            var peer = this.segments[r];
            var reported = false;
            var lastCheck = this.clock.GetTimestamp();
            for (var spin = 0; ; spin++)
            {
                var seen = peer.Int(OffArrive);
                if (seen - (int)target >= 0) break;
                if (spin < 32)
                {
                    Thread.SpinWait(20);
                    continue;
                }
                if (!reported)
                {
                    Progress?.Waiting(request.Operation, phase, 1, 1, block + 1, blocks, r);
                    reported = true;
                }
                peer.WaitChange(OffArrive, seen);
                var now = this.clock.GetTimestamp();
                if (request.Cancel.IsCancellationRequested)
                    throw new OperationCanceledException(Where(request, phase, block, blocks, r, "was cancelled"), request.Cancel);
                if (OperationTimeout != Timeout.InfiniteTimeSpan && this.clock.GetElapsedTime(request.Called, now) > OperationTimeout)
                    throw new CollectiveTimeoutException(Where(request, phase, block, blocks, r, string.Create(CultureInfo.InvariantCulture, $"timed out after {OperationTimeout.TotalSeconds:0.###} s")),
                        request.Operation, phase, 0, block, r);
                if (this.clock.GetElapsedTime(lastCheck, now) > TimeSpan.FromMilliseconds(100))
                {
                    lastCheck = now;
                    if (peer.Gone() is { } why)
                        throw new CollectiveException(Where(request, phase, block, blocks, r, $"failed: {why}"), request.Operation, phase, 0, block, r,
                            new RingTransportException($"shared-memory group peer {this.describe(r)}: {why}", r, this.describe(r)));
                }
            }
        }
    }

    private string Where(Request request, int phase, int block, int blocks, int peer, string what) =>
        $"shared-memory all-reduce operation {request.Operation} ({request.Buffer.Length} floats, rank {this.rank} of {this.world}) {what} in {phase switch { 0 => "reduce", 1 => "gather", _ => "release" }} of block {block + 1}/{blocks}, waiting for {this.describe(peer)}";

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        SharedMemoryLiveness.Stop(this);
        queue.CompleteAdding();
        this.segments[this.rank].SetInt(OffClosed, 1);
        this.segments[this.rank].Wake();
        // The worker thread ends after the operation in hand; it cannot wait long: peers see our closed flag.
        var ended = await Task.Run(() => thread.Join(TimeSpan.FromSeconds(30))).ConfigureAwait(false);
        // Never unmap under a thread that may still touch the mappings (the process ends before it matters).
        if (!ended) return;
        ReleaseRegions();
        foreach (var s in this.segments) s.Dispose();
        queue.Dispose();
    }

    void SharedMemoryLiveness.IBeating.Beat() => this.segments[this.rank].Beat();
}
