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
