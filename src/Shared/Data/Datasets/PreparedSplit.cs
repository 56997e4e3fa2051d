namespace Dtrain.Data.Datasets;

/// <summary>One split of an opened dataset: its memory-mapped shards in order.</summary>
public sealed class PreparedSplit(DatasetSplit entry, IReadOnlyList<PreparedShard> shards)
{
    public DatasetSplit Entry { get; } = entry;
    public IReadOnlyList<PreparedShard> Shards { get; } = shards;
    public long Tokens => Entry.Tokens;
    public long Records => Entry.Records;

    /// <summary>Every id of the split in order (a language model's stream): for tests and small datasets only.</summary>
    public int[] ReadAllTokens()
    {
        var all = new int[checked((int)Tokens)];
        var at = 0;
        foreach (var s in Shards)
        {
            s.Read(0, all.AsSpan(at, checked((int)s.TokenCount)));
            at += (int)s.TokenCount;
        }
        return all;
    }

    /// <summary>Every record of the split in order (classification): for tests and small datasets only.</summary>
    public IEnumerable<(int[] Ids, int Label)> ReadAllRecords()
    {
        foreach (var s in Shards)
            for (long k = 0; k < s.Records; k++) yield return s.Record(k);
    }
}
