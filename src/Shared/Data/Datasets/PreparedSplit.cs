using Dtrain.Training;

namespace Dtrain.Data.Datasets;

/// <summary>
/// One split of an opened dataset: its shards in order, read as one token stream (<see cref="ITokenSequence"/>, a
/// language model's) or as records (<see cref="IRecordSource"/>, classification), so the batch sources cut the same rows
/// from it as from the arrays <c>dtrain train</c> holds in memory. A shard is opened (memory-mapped, or fetched from
/// object storage first) the first time a read touches it; only the manifest's counts are needed before.
/// </summary>
public sealed class PreparedSplit : ITokenSequence, IRecordSource
{
    readonly Func<int, PreparedShard> open;
    readonly PreparedShard?[] opened;
    readonly Lazy<PreparedShard>?[] opening;
    readonly long[] tokenStarts, recordStarts;
    readonly object gate = new();

    public PreparedSplit(DatasetSplit entry, IReadOnlyList<PreparedShard> shards) : this(entry, i => shards[i])
    {
    }

    /// <summary>
    /// A split whose shard <c>i</c> is opened by <paramref name="open"/> when first read: once (a read of the same shard
    /// meanwhile waits for that opening), outside the split's lock, so a slow fetch from object storage holds back only
    /// the reads of its own shard. An opening that failed is tried again by the next read.
    /// </summary>
    public PreparedSplit(DatasetSplit entry, Func<int, PreparedShard> open)
    {
        Entry = entry;
        this.open = open;
        opened = new PreparedShard?[entry.Shards.Count];
        opening = new Lazy<PreparedShard>?[entry.Shards.Count];
        tokenStarts = new long[entry.Shards.Count + 1];
        recordStarts = new long[entry.Shards.Count + 1];
        for (var i = 0; i < entry.Shards.Count; i++)
        {
            tokenStarts[i + 1] = tokenStarts[i] + entry.Shards[i].TokenCount;
            recordStarts[i + 1] = recordStarts[i] + entry.Shards[i].Records;
        }
    }

    public DatasetSplit Entry { get; }
    public long Tokens => Entry.Tokens;
    public long Records => Entry.Records;

    /// <summary>Every shard, opened.</summary>
    public IReadOnlyList<PreparedShard> Shards => [.. Enumerable.Range(0, opened.Length).Select(Shard)];

    /// <summary>How many shards have been opened so far.</summary>
    public int ShardsOpened
    {
        get
        {
            lock (gate) return opened.Count(s => s is not null);
        }
    }

    /// <summary>Shard <paramref name="index"/>, opened on first use.</summary>
    public PreparedShard Shard(int index)
    {
        Lazy<PreparedShard> once;
        lock (gate)
        {
            if (opened[index] is { } shard) return shard;
            once = opening[index] ??= new Lazy<PreparedShard>(() => open(index), LazyThreadSafetyMode.ExecutionAndPublication);
        }
        try
        {
            var shard = once.Value;
            lock (gate) opened[index] = shard;
            return shard;
        }
        catch
        {
            lock (gate)
            {
                if (ReferenceEquals(opening[index], once)) opening[index] = null;
            }
            throw;
        }
    }

    long ITokenSequence.Length => Tokens;

    int IRecordSource.Count => Records <= int.MaxValue ? (int)Records
        : throw new NotSupportedException($"a split of {Records:N0} records: at most {int.MaxValue:N0} can be trained");

    /// <summary>Copies ids [<paramref name="offset"/>, offset + destination.Length) of the split's stream, across shards.</summary>
    public void Read(long offset, Span<int> destination)
    {
        if (offset < 0 || offset + destination.Length > Tokens)
            throw new ArgumentOutOfRangeException(nameof(offset), offset, $"[{offset}, {offset + destination.Length}) is outside the split's {Tokens} tokens");
        var shard = ShardOf(tokenStarts, offset);
        while (!destination.IsEmpty)
        {
            var within = offset - tokenStarts[shard];
            var n = (int)Math.Min(destination.Length, tokenStarts[shard + 1] - offset);
            if (n > 0) Shard(shard).Read(within, destination[..n]);
            destination = destination[n..];
            offset += n;
            shard++;
        }
    }

    /// <summary>Record <paramref name="index"/> of the split (classification): its ids and label id.</summary>
    public (int[] Ids, int Label) Record(long index)
    {
        if ((ulong)index >= (ulong)Records) throw new ArgumentOutOfRangeException(nameof(index), index, $"outside the split's {Records} records");
        var shard = ShardOf(recordStarts, index);
        return Shard(shard).Record(index - recordStarts[shard]);
    }

    int[] IRecordSource.Tokens(int index) => Record(index).Ids;

    int IRecordSource.Label(int index) => Record(index).Label;

    /// <summary>The shard holding position <paramref name="at"/> of <paramref name="starts"/> (cumulative starts): the last with start ≤ at and something in it.</summary>
    static int ShardOf(long[] starts, long at)
    {
        var i = Array.BinarySearch(starts, 0, starts.Length - 1, at);
        if (i < 0) i = ~i - 1;
        // Skip empty shards starting at the same position.
        while (i + 1 < starts.Length - 1 && starts[i + 1] == at) i++;
        return Math.Max(0, i);
    }

    /// <summary>Every id of the split in order (a language model's stream): for tests and small datasets only.</summary>
    public int[] ReadAllTokens()
    {
        var all = new int[checked((int)Tokens)];
        Read(0, all);
        return all;
    }

    /// <summary>Every record of the split in order (classification): for tests and small datasets only.</summary>
    public IEnumerable<(int[] Ids, int Label)> ReadAllRecords()
    {
        for (long k = 0; k < Records; k++) yield return Record(k);
    }
}
