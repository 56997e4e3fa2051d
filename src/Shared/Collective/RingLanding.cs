using System.Runtime.InteropServices;

namespace Dtrain.Collective;

/// <summary>
/// Where one expected piece of an operation lands in the caller's memory: added into <see cref="Destination"/>
/// (reduce-scatter) or copied over it (all-gather), by whichever thread receives it — a link's reader, as gloo's
/// receive side does — so the piece needs no buffer of its own and no hop to the operation's thread. A transport that
/// can (one whose pieces arrive in a <see cref="RingMailbox"/>) takes landings through
/// <see cref="IRingTransport.Expect"/>; a plain-copy piece on a TCP link is read from the socket straight into place.
/// </summary>
public sealed class RingLanding
{
    internal const int Pending = 0, Claimed = 1, Ended = 2;

    private readonly TaskCompletionSource landed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Action<RingLanding, Exception?>? ended;

    /// <param name="tag">The piece expected.</param>
    /// <param name="offset">Element offset the sender must announce (checked).</param>
    /// <param name="pieces">Piece count the sender must announce (checked).</param>
    /// <param name="destination">Where the values go; its length is the value count the piece must carry.</param>
    /// <param name="add">Add into the destination (else copy over it).</param>
    /// <param name="compression">How the values travel; 16-bit pieces are decoded (and added) in fp32.</param>
    /// <param name="round">After landing, round the destination to <paramref name="compression"/> (the rank that computed a chunk's final sum).</param>
    /// <param name="ended">Told once, on the thread that landed or failed it, when the piece has landed (null) or cannot (the failure).</param>
    public RingLanding(RingTag tag, long offset, int pieces, Memory<float> destination, bool add, RingCompression compression = RingCompression.None,
        bool round = false, Action<RingLanding, Exception?>? ended = null)
    {
        Tag = tag;
        Offset = offset;
        Pieces = pieces;
        Destination = destination;
        Add = add;
        Compression = compression;
        Round = round && compression != RingCompression.None;
        this.ended = ended;
    }

    public RingTag Tag { get; }

    public long Offset { get; }

    public int Pieces { get; }

    public Memory<float> Destination { get; }

    public bool Add { get; }

    public RingCompression Compression { get; }

    public bool Round { get; }

    /// <summary>Completes when the values are in place; fails when they never will be (<see cref="RingLandingMismatchException"/> for a piece that does not fit).</summary>
    public Task Landed => landed.Task;

    /// <summary><see cref="Pending"/>, <see cref="Claimed"/> (a thread is writing into the destination) or <see cref="Ended"/>; guarded by the mailbox's lock.</summary>
    internal int State { get; set; }

    /// <summary>Claimed by a reader blocked on a socket read into the destination (taking it back means breaking the link).</summary>
    internal bool BlockingRead { get; set; }

    /// <summary>Bytes the piece must carry.</summary>
    public int ExpectedBytes => WireCodec.EncodedBytes(Compression, Destination.Length);

    private bool Fits(long offset, int pieces, int bytes) => offset == Offset && pieces == Pieces && bytes == ExpectedBytes;

    /// <summary>Whether a frame that announces these values can be read straight into the destination's bytes (a plain copy that fits).</summary>
    internal bool TakesDirect(long offset, int pieces, int bytes) => !Add && Compression == RingCompression.None && Fits(offset, pieces, bytes);

    /// <summary>
    /// Whether a frame that announces these values can be added into the destination part by part as it is read (an
    /// uncompressed sum that fits): the reader adds each part from a buffer that stays in cache instead of landing the
    /// whole piece in a buffer of its own first (<see cref="AddPart"/>, then <see cref="Complete"/>).
    /// </summary>
    internal bool TakesStreamed(long offset, int pieces, int bytes) => Add && Compression == RingCompression.None && Fits(offset, pieces, bytes);

    /// <summary>Adds the piece's bytes [<paramref name="at"/>, + <paramref name="bytes"/>.Length) into their place in the destination (both multiples of 4).</summary>
    internal void AddPart(ReadOnlySpan<byte> bytes, int at) =>
        RingAllReduce.Add(Destination.Span.Slice(at / sizeof(float), bytes.Length / sizeof(float)), MemoryMarshal.Cast<byte, float>(bytes));

    /// <summary>Lands a piece's bytes (adding, copying or decoding), or fails with <see cref="RingLandingMismatchException"/> when they do not fit.</summary>
    internal void Apply(ReadOnlySpan<byte> bytes, long offset, int pieces)
    {
        if (!Fits(offset, pieces, bytes.Length))
        {
            Fail(new RingLandingMismatchException(this, offset, pieces, bytes.Length));
            return;
        }
        var destination = Destination.Span;
        if (Compression == RingCompression.None)
        {
            var values = MemoryMarshal.Cast<byte, float>(bytes);
            if (Add) RingAllReduce.Add(destination, values);
            else values.CopyTo(destination);
        }
        else
        {
            WireCodec.Decode(Compression, bytes, destination, Add);
            if (Round) WireCodec.Round(Compression, destination);
        }
        Complete();
    }

    /// <summary>The values are in place (read straight into the destination).</summary>
    internal void Complete()
    {
        if (landed.TrySetResult()) this.ended?.Invoke(this, null);
    }

    internal void Fail(Exception failure)
    {
        if (!landed.TrySetException(failure)) return;
        _ = landed.Task.Exception;   // observed: the operation reports it (or has given up on this piece)
        this.ended?.Invoke(this, failure);
    }
}

/// <summary>A piece arrived for a landing but announced a different place or size: ranks disagree on the buffer, piece size or compression.</summary>
public sealed class RingLandingMismatchException(RingLanding landing, long offset, int pieces, int bytes)
    : IOException($"{landing.Tag} covers [{offset}, {bytes} bytes) of {pieces} pieces, expected [{landing.Offset}, +{landing.Destination.Length} values = {landing.ExpectedBytes} bytes) of {landing.Pieces}")
{
    public long Offset { get; } = offset;

    public int Pieces { get; } = pieces;

    public int Bytes { get; } = bytes;
}

/// <summary>
/// The landings of one operation taken by a transport. Disposing takes back those that have not landed; once it
/// returns, nothing writes into their destinations any more (a reader caught mid-read is stopped by breaking its link).
/// </summary>
public sealed class RingLandingZone(Action revoke, CancellationToken broken, Func<Exception?> brokenFailure) : IDisposable
{
    private int disposed;

    /// <summary>Cancelled when a link of this worker breaks: in a ring, the operation cannot finish then.</summary>
    public CancellationToken Broken { get; } = broken;

    /// <summary>Which link broke, as the transport reports it (or null).</summary>
    public Exception? BrokenFailure() => brokenFailure();

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) == 0) revoke();
    }
}
