using System.Buffers;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Text;

namespace Dtrain.Collective;

/// <summary>
/// A single-producer single-consumer byte ring in a memory-mapped file in /dev/shm, one per directed pair of workers on
/// the same host. The sender creates the file (mode 0600), the receiver maps it and deletes it at once (the mapping
/// stays valid; nothing is left behind when either process dies). Layout: a 4 KiB header, then the data ring.
/// Synchronisation: 64-bit write and read positions (monotonic byte counts, published with Volatile writes after the
/// bytes), and two 32-bit sequence words bumped with Interlocked after every publish; a side with nothing to do
/// waits on the word with a Linux futex (shared, so it works across processes) for at most 20 ms, then re-checks
/// the peer: its closed flag, its process (when in our pid namespace) and its heartbeat (a counter each side bumps
/// every 250 ms). A dead or silent peer (no heartbeat for <see cref="CollectiveTimeouts.PeerSilentAfter"/>) fails the link with an
/// <see cref="IOException"/> the transport turns into a <see cref="RingTransportException"/>.
/// </summary>
internal sealed unsafe class SharedMemoryRing : IDisposable, SharedMemoryLiveness.IBeating
{
    public const string Directory = "/dev/shm";
    private const long MagicValue = 0x314D48534E525444;   // "DTRNSHM1"
    private const int HeaderBytes = 4096;
    private const int OffMagic = 0, OffCapacity = 8, OffWrite = 16, OffRead = 24, OffDataSeq = 32, OffSpaceSeq = 36,
        OffWriterClosed = 40, OffReaderClosed = 44, OffWriterBeat = 48, OffReaderBeat = 56, OffWriterPid = 64, OffReaderPid = 68,
        OffWriterPidNs = 72, OffReaderPidNs = 80, OffGeneration = 96, OffSender = 104, OffTokenLength = 108, OffToken = 112,
        OffJobLength = 368, OffJob = 372;
    private const int MaxJobBytes = HeaderBytes - OffJob;

    /// <summary>Lend frames in place to a waiting receiver (saves a copy, costs two thread hand-offs per piece; measured faster here at 2 and 4 workers).</summary>
    public static bool LendInPlace { get; set; } = true;

    internal const string ReceiverClosedMessage = "the receiver closed the shared-memory ring";

    private readonly MemoryMappedFile file;
    private readonly MemoryMappedViewAccessor view;
    private readonly byte* basePointer;
    private readonly long capacity;
    private readonly bool writer;
    private readonly PeerLiveness peer;
    private int disposed;

    private SharedMemoryRing(MemoryMappedFile file, bool writer, TimeSpan? peerSilentAfter)
    {
        peer = new PeerLiveness(peerSilentAfter);
        this.file = file;
        view = file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.ReadWrite);
        byte* pointer = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        basePointer = pointer + view.PointerOffset;
        this.writer = writer;
        this.capacity = writer ? 0 : Long(OffCapacity);
        if (writer) return;
        SharedMemoryLiveness.Start(this);
    }

    private SharedMemoryRing(MemoryMappedFile file, long capacity, TimeSpan? peerSilentAfter) : this(file, writer: true, peerSilentAfter)
    {
        this.capacity = capacity;
        SharedMemoryLiveness.Start(this);
    }

    public long Capacity => this.capacity;

    /// <summary>Set before the writer unmaps: a send waiting for room gives up.</summary>
    public volatile bool Closing;

    /// <summary>Creates the ring file (the sending side); a receiver silent for <paramref name="peerSilentAfter"/> (default <see cref="CollectiveTimeouts.PeerSilentAfter"/>) is taken for dead.</summary>
    public static SharedMemoryRing Create(string path, long capacity, string jobId, long generation, int sender, ReadOnlySpan<byte> token, TimeSpan? peerSilentAfter = null)
    {
        var job = Encoding.UTF8.GetBytes(jobId);
        if (job.Length > MaxJobBytes) throw new ArgumentException($"job id longer than {MaxJobBytes} bytes", nameof(jobId));
        if (token.Length > OffJobLength - OffToken) throw new ArgumentException("token too long", nameof(token));
        var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.ReadWrite,
            Share = FileShare.ReadWrite | FileShare.Delete,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        MemoryMappedFile file;
        try
        {
            stream.SetLength(HeaderBytes + capacity);
            file = MemoryMappedFile.CreateFromFile(stream, null, HeaderBytes + capacity, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
        }
        catch
        {
            stream.Dispose();
            TryDelete(path);
            throw;
        }
        var ring = new SharedMemoryRing(file, capacity, peerSilentAfter);
        ring.SetLong(OffCapacity, capacity);
        ring.SetLong(OffGeneration, generation);
        ring.SetInt(OffSender, sender);
        ring.SetInt(OffTokenLength, token.Length);
        token.CopyTo(new Span<byte>(ring.basePointer + OffToken, token.Length));
        ring.SetInt(OffJobLength, job.Length);
        job.CopyTo(new Span<byte>(ring.basePointer + OffJob, job.Length));
        ring.SetInt(OffWriterPid, Environment.ProcessId);
        ring.SetLong(OffWriterPidNs, SharedMemoryLiveness.OwnPidNamespace);
        Volatile.Write(ref *(long*)(ring.basePointer + OffMagic), MagicValue);
        return ring;
    }

    /// <summary>Maps a ring file made by the sender (the receiving side) and checks it belongs to this ring; deletes the file.</summary>
    public static SharedMemoryRing Open(string path, string jobId, long generation, int sender, ReadOnlySpan<byte> token, TimeSpan? peerSilentAfter = null)
    {
        if (!path.StartsWith(Directory + "/", StringComparison.Ordinal) || path.Contains("..", StringComparison.Ordinal) || Path.GetFileName(path) is not { Length: > 0 } name || !name.StartsWith("dtrain-", StringComparison.Ordinal))
            throw new InvalidDataException($"\"{path}\" is not a dtrain ring file in {Directory}");
        var info = new FileInfo(path);
        if (!info.Exists) throw new FileNotFoundException($"{path} does not exist here: the sender is not on this host (or not in this /dev/shm)");
        if (info.Length <= HeaderBytes) throw new InvalidDataException($"{path} is too small for a ring");
        var file = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.ReadWrite);
        SharedMemoryRing ring;
        try
        {
            ring = new SharedMemoryRing(file, writer: false, peerSilentAfter);
        }
        catch
        {
            file.Dispose();
            throw;
        }
        try
        {
            if (Volatile.Read(ref *(long*)(ring.basePointer + OffMagic)) != MagicValue) throw new InvalidDataException($"{path} is not a dtrain ring (bad magic)");
            if (ring.capacity <= 0 || ring.capacity != info.Length - HeaderBytes) throw new InvalidDataException($"{path}: capacity {ring.capacity} does not match the file");
            var jobLength = ring.Int(OffJobLength);
            var job = jobLength is > 0 and <= MaxJobBytes ? Encoding.UTF8.GetString(new ReadOnlySpan<byte>(ring.basePointer + OffJob, jobLength)) : "";
            var tokenLength = ring.Int(OffTokenLength);
            var presented = tokenLength is >= 0 and <= OffJobLength - OffToken ? new ReadOnlySpan<byte>(ring.basePointer + OffToken, tokenLength) : [];
            if (job != jobId || ring.Long(OffGeneration) != generation || ring.Int(OffSender) != sender)
                throw new InvalidDataException($"{path} belongs to ring {job}/{ring.Long(OffGeneration)} from rank {ring.Int(OffSender)}, not {jobId}/{generation} from rank {sender}");
            if (token.IsEmpty || !System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(presented, token))
                throw new InvalidDataException($"{path} does not carry the token this worker gave rank {sender} of ring {jobId}/{generation}");
            ring.SetInt(OffReaderPid, Environment.ProcessId);
            ring.SetLong(OffReaderPidNs, SharedMemoryLiveness.OwnPidNamespace);
            TryDelete(path);
            return ring;
        }
        catch
        {
            ring.Dispose();
            throw;
        }
    }

    public static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private long Long(int offset) => Volatile.Read(ref *(long*)(basePointer + offset));

    private void SetLong(int offset, long value) => Volatile.Write(ref *(long*)(basePointer + offset), value);

    private int Int(int offset) => Volatile.Read(ref *(int*)(basePointer + offset));

    private void SetInt(int offset, int value) => Volatile.Write(ref *(int*)(basePointer + offset), value);

    private int* Word(int offset) => (int*)(basePointer + offset);

    void SharedMemoryLiveness.IBeating.Beat() => Interlocked.Increment(ref *(long*)(basePointer + (this.writer ? OffWriterBeat : OffReaderBeat)));

    /// <summary>Why the other side is gone, or null while it is alive and has not closed.</summary>
    private string? PeerGone()
    {
        if (Int(this.writer ? OffReaderClosed : OffWriterClosed) != 0) return this.writer ? ReceiverClosedMessage : null;
        var pid = Int(this.writer ? OffReaderPid : OffWriterPid);
        return peer.Check(pid, Long(this.writer ? OffReaderPidNs : OffWriterPidNs), Long(this.writer ? OffReaderBeat : OffWriterBeat)) switch
        {
            PeerLiveness.Verdict.Died => $"the {(this.writer ? "receiving" : "sending")} process {pid} died",
            PeerLiveness.Verdict.Silent => $"the {(this.writer ? "receiving" : "sending")} side has not shown a heartbeat for {peer.SilentAfter.TotalSeconds:0.#} s",
            _ => null,
        };
    }


    /// <summary>Waits until the word differs from <paramref name="seen"/> or 20 ms pass (a short spin first).</summary>
    private void Wait(int offset, int seen)
    {
        var word = Word(offset);
        // A short spin only: on a busy machine the peer needs the core more than we need the latency.
        for (var i = 0; i < 16; i++)
        {
            if (Volatile.Read(ref *word) != seen) return;
            Thread.SpinWait(10);
        }
        Futex.Wait(word, seen, 20_000_000);
    }

    private void Signal(int offset)
    {
        Interlocked.Increment(ref *Word(offset));
        Futex.WakeAll(Word(offset));
    }

    private void CopyIn(long position, ReadOnlySpan<byte> source)
    {
        var at = position % this.capacity;
        var first = (int)Math.Min(source.Length, this.capacity - at);
        source[..first].CopyTo(new Span<byte>(basePointer + HeaderBytes + at, first));
        if (first < source.Length) source[first..].CopyTo(new Span<byte>(basePointer + HeaderBytes, source.Length - first));
    }

    private void CopyOut(long position, Span<byte> destination)
    {
        var at = position % this.capacity;
        var first = (int)Math.Min(destination.Length, this.capacity - at);
        new ReadOnlySpan<byte>(basePointer + HeaderBytes + at, first).CopyTo(destination);
        if (first < destination.Length) new ReadOnlySpan<byte>(basePointer + HeaderBytes, destination.Length - first).CopyTo(destination[first..]);
    }

    private static long Aligned(long bytes) => (bytes + 7) & ~7L;

    /// <summary>Writes one frame, waiting for room. Single writer (the caller serialises).</summary>
    public void Write(RingPiece piece, CancellationToken cancellationToken)
    {
        var need = PieceFrame.Size + Aligned(piece.Bytes.Length);
        if (need > this.capacity / 2) throw new InvalidOperationException($"a piece of {piece.Bytes.Length} bytes does not fit the shared-memory ring of {this.capacity} bytes");
        var write = Long(OffWrite);
        // Frames are contiguous (the reader lends the payload in place): one that would wrap starts at the ring's
        // beginning instead, after a pad (a header with length -1 when there is room for one; else implied).
        var at = write % this.capacity;
        var pad = at + need > this.capacity ? this.capacity - at : 0;
        while (true)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0 || Closing, this);
            var seen = Int(OffSpaceSeq);
            if (this.capacity - (write - Long(OffRead)) >= pad + need) break;
            cancellationToken.ThrowIfCancellationRequested();
            if (PeerGone() is { } gone) throw new IOException(gone);
            Wait(OffSpaceSeq, seen);
        }
        if (pad >= PieceFrame.Size) *(int*)(basePointer + HeaderBytes + at + 32) = -1;
        Span<byte> header = stackalloc byte[PieceFrame.Size];
        PieceFrame.Write(header, piece);
        CopyIn(write + pad, header);
        CopyIn(write + pad + PieceFrame.Size, piece.Bytes.Span);
        SetLong(OffWrite, write + pad + need);
        Signal(OffDataSeq);
    }

    /// <summary>Checks, without waiting, whether the receiver is gone (for sends that found room).</summary>
    public string? ReceiverGone() => this.writer ? PeerGone() : null;

    /// <summary>
    /// Reader loop (its own thread), until the sender closes or dies. A frame whose receiver is already waiting is lent
    /// in place (the reduce reads the shared memory itself; the slot is freed when the piece is disposed); any other
    /// is copied into a pooled buffer and queued, so a piece nobody asked for yet never holds the ring up.
    /// </summary>
    public void ReadInto(RingMailbox mailbox, int maxBytes, Action<Exception>? failed = null)
    {
        using var returned = new ManualResetEventSlim(false);
        try
        {
            Span<byte> header = stackalloc byte[PieceFrame.Size];
            while (Volatile.Read(ref disposed) == 0 && mailbox.ClosedReason is null)
            {
                var seen = Int(OffDataSeq);
                var read = Long(OffRead);
                if (Long(OffWrite) > read)
                {
                    var at = read % this.capacity;
                    if (this.capacity - at < PieceFrame.Size || *(int*)(basePointer + HeaderBytes + at + 32) == -1)
                    {
                        SetLong(OffRead, read + (this.capacity - at));   // pad before a frame that would have wrapped
                        continue;
                    }
                    CopyOut(read, header);
                    var (tag, pieces, offset, length, shape) = PieceFrame.Read(header, maxBytes, mailbox.WorldSize, mailbox.Kind);
                    if (at + PieceFrame.Size + length > this.capacity) throw new InvalidDataException($"a frame of {length} bytes at {at} runs past the ring's end");
                    var lent = new Lent(basePointer + HeaderBytes + at + PieceFrame.Size, length, returned);
                    returned.Reset();
                    if (LendInPlace && mailbox.TryHandToWaiter(RingPiece.FromBytes(tag, offset, pieces, lent.Memory, lent).WithShape(shape)))
                    {
                        returned.Wait();   // the reduce reads it in place, then disposes the piece
                    }
                    else
                    {
                        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, length));
                        CopyOut(read + PieceFrame.Size, buffer.AsSpan(0, length));
                        mailbox.Deliver(RingPiece.FromBytes(tag, offset, pieces, buffer.AsMemory(0, length), new Pooled(buffer)).WithShape(shape));
                    }
                    SetLong(OffRead, read + PieceFrame.Size + Aligned(length));
                    Signal(OffSpaceSeq);
                    continue;
                }
                if (Int(OffWriterClosed) != 0)
                {
                    mailbox.CompleteInbound(null);
                    return;
                }
                if (PeerGone() is { } gone) throw new IOException(gone);
                Wait(OffDataSeq, seen);
            }
            mailbox.CompleteInbound(new ObjectDisposedException(nameof(SharedMemoryRing), "the shared-memory ring was closed on this side"));
        }
        catch (Exception ex)
        {
            failed?.Invoke(ex);
            mailbox.CompleteInbound(ex);
        }
        finally
        {
            Dispose();
        }
    }

    /// <summary>Unmaps. A reader ring is disposed only by its own reader thread (it stops within 20 ms of its mailbox closing).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        SharedMemoryLiveness.Stop(this);   // no beat after this: the view is about to go
        SetInt(this.writer ? OffWriterClosed : OffReaderClosed, 1);
        Signal(OffDataSeq);
        Signal(OffSpaceSeq);
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        this.file.Dispose();
    }

    /// <summary>A payload lent in place from the mapping; disposing the piece gives the slot back to the reader.</summary>
    private sealed class Lent(byte* pointer, int length, ManualResetEventSlim returned) : MemoryManager<byte>, IDisposable
    {
        private int released;

        public override Span<byte> GetSpan() => new(pointer, length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

        public override void Unpin()
        {
        }

        void IDisposable.Dispose()
        {
            if (Interlocked.Exchange(ref released, 1) == 0) returned.Set();
        }

        protected override void Dispose(bool disposing)
        {
            if (Interlocked.Exchange(ref released, 1) == 0) returned.Set();
        }
    }

    private sealed class Pooled(byte[] buffer) : IDisposable
    {
        private byte[]? buffer = buffer;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref this.buffer, null) is { } b) ArrayPool<byte>.Shared.Return(b);
        }
    }

    /// <summary>Linux futex on a shared mapping (not FUTEX_PRIVATE: the waiter and the waker are different processes).</summary>
    internal static class Futex
    {
        private const long SysFutex = 202;   // x86-64
        private const int FutexWait = 0, FutexWake = 1;

        [StructLayout(LayoutKind.Sequential)]
        private struct Timespec
        {
            public long Seconds;
            public long Nanoseconds;
        }

        [DllImport("libc", EntryPoint = "syscall", SetLastError = true)]
        private static extern long Syscall(long number, int* address, int operation, int value, Timespec* timeout, IntPtr address2, int value3);

        public static void Wait(int* word, int expected, long nanoseconds)
        {
            var timeout = new Timespec { Seconds = nanoseconds / 1_000_000_000, Nanoseconds = nanoseconds % 1_000_000_000 };
            if (OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64) Syscall(SysFutex, word, FutexWait, expected, &timeout, IntPtr.Zero, 0);
            else Thread.Sleep(1);
        }

        public static void WakeAll(int* word)
        {
            if (OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64) Syscall(SysFutex, word, FutexWake, int.MaxValue, null, IntPtr.Zero, 0);
        }
    }
}

/// <summary>
/// The sending end of a <see cref="SharedMemoryRing"/>. Pieces are copied in by a thread of the link's own, which may
/// block (futex) while the ring is full: never a thread-pool thread, whose blocking could starve the continuations that
/// free the peer's ring (with lent pieces, the two ends of a pair wait on each other's pools).
/// </summary>
internal sealed class SharedMemoryOutbound : IOutboundLink
{
    private readonly SharedMemoryRing ring;
    private readonly System.Collections.Concurrent.BlockingCollection<(RingPiece Piece, TaskCompletionSource Done, CancellationToken Cancel)> queue = new();
    private readonly Thread writer;
    private readonly CancellationTokenSource broken = new();
    private readonly Timer watch;
    private Exception? fault;
    private int busy;
    private int disposed;

    private readonly TimeSpan closeGrace;

    /// <param name="closeGrace">How long receives go on after the receiver closed cleanly, and disposing waits for the writer thread (default <see cref="CollectiveTimeouts.CloseGrace"/>).</param>
    public SharedMemoryOutbound(SharedMemoryRing ring, TimeSpan? closeGrace = null)
    {
        this.ring = ring;
        this.closeGrace = closeGrace ?? CollectiveTimeouts.Default.CloseGrace;
        this.writer = new Thread(WriteLoop) { IsBackground = true, Name = "dtrain shm writer" };
        this.writer.Start();
        // Notice a receiver that closed or died while we have nothing to send (the ring then fails its receives too).
        watch = new Timer(_ => Check(), null, TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100));
    }

    public string Kind => DataTransports.Describe(DataTransport.Shm);

    public CancellationToken Broken => broken.Token;

    public Exception? Fault => Volatile.Read(ref this.fault);

    private void WriteLoop()
    {
        foreach (var (piece, done, cancel) in queue.GetConsumingEnumerable())
        {
            Volatile.Write(ref busy, 1);
            try
            {
                if (Volatile.Read(ref this.fault) is { } fault) throw new IOException(fault.Message, fault);
                if (ring.ReceiverGone() is { } gone) throw new IOException(gone);
                ring.Write(piece, cancel);
                done.SetResult();
            }
            catch (OperationCanceledException ex)
            {
                done.SetCanceled(ex.CancellationToken);
            }
            catch (Exception ex)
            {
                Break(ex is IOException ? ex : new IOException(ex.Message, ex));
                done.SetException(ex);
            }
            finally
            {
                Volatile.Write(ref busy, 0);
            }
        }
    }

    private void Check()
    {
        if (Volatile.Read(ref disposed) != 0 || Volatile.Read(ref this.fault) is not null || Volatile.Read(ref busy) != 0) return;
        if (ring.ReceiverGone() is { } gone) Break(new IOException(gone));
    }

    /// <summary>
    /// Sends fail from now on. Receives of this worker fail too — after the close grace
    /// when the receiver closed the ring cleanly (it finished its last operation: this worker may still be receiving
    /// the end of that operation from its other neighbour), at once when it died.
    /// </summary>
    private void Break(Exception ex)
    {
        if (Interlocked.CompareExchange(ref this.fault, ex, null) is not null) return;
        try
        {
            if (ex.Message == SharedMemoryRing.ReceiverClosedMessage) broken.CancelAfter(closeGrace);
            else broken.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>Completes when the piece is in the ring (the caller's memory is not read after that).</summary>
    public async ValueTask SendAsync(RingPiece piece, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        if (Volatile.Read(ref this.fault) is { } fault) throw new IOException(fault.Message, fault);
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            queue.Add((piece, done, cancellationToken), CancellationToken.None);
        }
        catch (InvalidOperationException)
        {
            throw new ObjectDisposedException(nameof(SharedMemoryOutbound));
        }
        // Not abandoned on cancellation: the writer may be copying the caller's memory; it stops at its next wait.
        await done.Task.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        await watch.DisposeAsync().ConfigureAwait(false);
        ring.Closing = true;
        Break(new ObjectDisposedException(nameof(SharedMemoryOutbound), "the link was closed on this side"));
        queue.CompleteAdding();
        // A write waiting for room notices Closing within 20 ms; only then may the mapping go.
        if (await Task.Run(() => this.writer.Join(closeGrace)).ConfigureAwait(false)) ring.Dispose();
        // else: a write is stuck in a copy; leave the mapping rather than pull it from under it
        queue.Dispose();
    }
}
