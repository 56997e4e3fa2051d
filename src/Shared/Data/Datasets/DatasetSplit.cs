namespace Dtrain.Data.Datasets;

/// <summary>A split (train or validation) of a prepared dataset: its shards in order, and their totals.</summary>
public sealed record DatasetSplit
{
    public required long Tokens { get; init; }
    /// <summary>Records (classification); 0 for a language model, whose split is one token stream.</summary>
    public long Records { get; init; }
    public required IReadOnlyList<DatasetShard> Shards { get; init; }
}
