namespace Dtrain.Training;

/// <summary>
/// A stream of token ids read by position (a language model's text): the in-memory array of a job read by
/// <c>dtrain train</c> (<see cref="ArrayTokenSequence"/>) or a prepared dataset's split, memory-mapped or fetched from
/// object storage (<see cref="Data.Datasets.PreparedSplit"/>). Offsets are long: a corpus may exceed 2^31 tokens.
/// The batch sources read through it, so the same code cuts the same rows from either.
/// </summary>
public interface ITokenSequence
{
    long Length { get; }
    /// <summary>Copies ids [<paramref name="offset"/>, offset + destination.Length) into <paramref name="destination"/>.</summary>
    void Read(long offset, Span<int> destination);
}

/// <summary>
/// Labelled records read by index (classification): the in-memory lists (<see cref="ListRecordSource"/>) or a prepared
/// dataset's split (<see cref="Data.Datasets.PreparedSplit"/>).
/// </summary>
public interface IRecordSource
{
    int Count { get; }
    /// <summary>The token ids of record <paramref name="index"/> (never to be modified by the caller).</summary>
    int[] Tokens(int index);
    /// <summary>The label id of record <paramref name="index"/>.</summary>
    int Label(int index);
}

/// <summary>An <see cref="ITokenSequence"/> over an array held in memory.</summary>
public sealed class ArrayTokenSequence(int[] tokens) : ITokenSequence
{
    public long Length => tokens.Length;

    public void Read(long offset, Span<int> destination)
    {
        if (offset < 0 || offset + destination.Length > tokens.Length)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"[{offset}, {offset + destination.Length}) is outside the {tokens.Length} tokens");
        tokens.AsSpan((int)offset, destination.Length).CopyTo(destination);
    }
}

/// <summary>An <see cref="IRecordSource"/> over sequences and label ids held in memory.</summary>
public sealed class ListRecordSource : IRecordSource
{
    private readonly IReadOnlyList<int[]> sequences;
    private readonly IReadOnlyList<int> labels;

    public ListRecordSource(IReadOnlyList<int[]> sequences, IReadOnlyList<int> labels)
    {
        if (labels.Count != sequences.Count) throw new ArgumentException($"{labels.Count} labels for {sequences.Count} sequences", nameof(labels));
        this.sequences = sequences;
        this.labels = labels;
    }

    public int Count => sequences.Count;
    public int[] Tokens(int index) => sequences[index];
    public int Label(int index) => labels[index];
}

/// <summary>
/// A part of a token stream held in memory — tokens [offset, offset + held.Length) of a stream of length tokens — read by the stream's positions (a rank's part of a language model's validation split:
/// its streams are cut from the whole split's length, so they are the ones one process reads). Reading outside the
/// part is refused.
/// </summary>
public sealed class PartTokenSequence : ITokenSequence
{
    private readonly int[] held;
    private readonly long offset;

    public PartTokenSequence(int[] held, long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + held.Length > length)
            throw new ArgumentException($"tokens [{offset}, {offset + held.Length}) are not a part of a stream of {length} tokens");
        this.held = held;
        this.offset = offset;
        Length = length;
    }

    public long Length { get; }

    public void Read(long position, Span<int> destination)
    {
        if (position < offset || position + destination.Length > offset + held.Length)
            throw new ArgumentOutOfRangeException(nameof(position), position,
                $"tokens [{position}, {position + destination.Length}) of the {Length} are not in the part held here, [{offset}, {offset + held.Length})");
        held.AsSpan((int)(position - offset), destination.Length).CopyTo(destination);
    }
}

/// <summary>
/// A part of a record list held in memory — records [offset, offset + sequences.Count) of count records — read by the whole list's indices (a rank's part of a classifier's validation split, its
/// batches cut as one process cuts them). Reading outside the part is refused.
/// </summary>
public sealed class PartRecordSource : IRecordSource
{
    private readonly ListRecordSource held;
    private readonly int offset;

    public PartRecordSource(IReadOnlyList<int[]> sequences, IReadOnlyList<int> labels, long offset, long count)
    {
        if (offset < 0 || count < 0 || count > int.MaxValue || offset + sequences.Count > count)
            throw new ArgumentException($"records [{offset}, {offset + sequences.Count}) are not a part of {count} records");
        held = new ListRecordSource(sequences, labels);
        this.offset = (int)offset;
        Count = (int)count;
    }

    public int Count { get; }
    public int[] Tokens(int index) => held.Tokens(Local(index));
    public int Label(int index) => held.Label(Local(index));

    private int Local(int index) =>
        index >= offset && index < offset + held.Count ? index - offset
            : throw new ArgumentOutOfRangeException(nameof(index), index, $"record {index} of the {Count} is not in the part held here, [{offset}, {offset + held.Count})");
}
