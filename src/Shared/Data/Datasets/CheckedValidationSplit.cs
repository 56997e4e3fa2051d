using Dtrain.Training;

namespace Dtrain.Data.Datasets;

/// <summary>
/// A dataset's validation split as evaluation reads it, through its shards (nothing loaded whole): every id, record
/// and label is checked as it is read, before it reaches torch (a bad id would reach libtorch, whose errors abort the
/// process), so only what evaluation reads is read. A language model's ids inside the vocabulary; a classifier's
/// records have tokens, ids inside the vocabulary and a label of the set. A failure is <paramref name="problem"/>(file,
/// what is wrong), naming the shard's file.
/// </summary>
public sealed class CheckedValidationSplit(StoredDataset dataset, int vocabSize, int labels, Func<string, string, Exception> problem) : ITokenSequence, IRecordSource
{
    private PreparedSplit Split => dataset.Validation;

    public long Length => ((ITokenSequence)Split).Length;

    public int Count => ((IRecordSource)Split).Count;

    public void Read(long offset, Span<int> destination)
    {
        ((ITokenSequence)Split).Read(offset, destination);
        for (var j = 0; j < destination.Length; j++)
            if ((uint)destination[j] >= (uint)vocabSize)
            {
                var (shard, at) = Locate(offset + j, s => s.TokenCount);
                throw problem(shard.Tokens.Name, $"id {destination[j]} at token {at} outside the vocabulary [0, {vocabSize})");
            }
    }

    public int[] Tokens(int index)
    {
        var ids = ((IRecordSource)Split).Tokens(index);
        if (ids.Length == 0 || ids.Any(id => (uint)id >= (uint)vocabSize))
        {
            var (shard, k) = Locate(index, s => s.Records);
            if (ids.Length == 0) throw problem(shard.Tokens.Name, $"validation record {k} has no tokens");
            var bad = ids.First(id => (uint)id >= (uint)vocabSize);
            throw problem(shard.Tokens.Name, $"validation record {k}: id {bad} outside the vocabulary [0, {vocabSize})");
        }
        return ids;
    }

    public int Label(int index)
    {
        var label = ((IRecordSource)Split).Label(index);
        if ((uint)label >= (uint)labels)
        {
            var (shard, k) = Locate(index, s => s.Records);
            throw problem(shard.Labels?.Name ?? shard.Tokens.Name, $"validation record {k}: label id {label} outside [0, {labels})");
        }
        return label;
    }

    /// <summary>The shard holding item <paramref name="index"/> of the split (counted by <paramref name="count"/>), and its index there.</summary>
    private (DatasetShard Shard, long At) Locate(long index, Func<DatasetShard, long> count)
    {
        foreach (var shard in Split.Entry.Shards)
        {
            if (index < count(shard)) return (shard, index);
            index -= count(shard);
        }
        throw new ArgumentOutOfRangeException(nameof(index), index, "outside the validation split");
    }
}
