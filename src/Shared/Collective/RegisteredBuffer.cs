namespace Dtrain.Collective;

/// <summary>
/// A rank's buffer in shared memory that the other ranks of its <see cref="SharedMemoryAllReduce"/> group have mapped
/// (<see cref="SharedMemoryAllReduce.RegisterBufferAsync"/>): sums of its slices are zero-copy. Use it as any
/// <see cref="Memory{T}"/> (<see cref="System.Buffers.MemoryManager{T}.Memory"/>); dispose it when done. The memory stays
/// mapped until both its owner and the group have let it go, so a group that ends first never pulls it away.
/// </summary>
public sealed unsafe class RegisteredBuffer : System.Buffers.MemoryManager<float>
{
    private readonly SharedMemoryMapping mapping;
    private readonly int length;
    private int references = 2;   // the caller's and the group's
    private int ownerReleased;

    internal RegisteredBuffer(SharedMemoryMapping mapping, int length)
    {
        this.mapping = mapping;
        this.length = length;
    }

    /// <summary>Values in the buffer.</summary>
    public int Length => this.length;

    private byte* Base => this.mapping.Base;

    public Span<float> Span => GetSpan();

    public override Span<float> GetSpan() => Volatile.Read(ref references) > 0 ? new Span<float>(Base, this.length) : throw new ObjectDisposedException(nameof(RegisteredBuffer));

    public override System.Buffers.MemoryHandle Pin(int elementIndex = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elementIndex);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(elementIndex, this.length);
        return new System.Buffers.MemoryHandle((float*)Base + elementIndex);
    }

    public override void Unpin()
    {
    }

    /// <summary>Drops one reference (the owner's through Dispose, the group's when it ends or registers again); the last one unmaps.</summary>
    internal void Release()
    {
        if (Interlocked.Decrement(ref references) == 0) this.mapping.Dispose();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref ownerReleased, 1) == 0) Release();
    }
}
