namespace Dtrain.Data.Datasets;

/// <summary>
/// One shard of a split: <see cref="Tokens"/> holds <see cref="TokenCount"/> fixed-width little-endian ids; for
/// classification, <see cref="Offsets"/> holds <see cref="Records"/> + 1 little-endian uint64 token offsets (the first 0,
/// the last <see cref="TokenCount"/>: record k is ids [offsets[k], offsets[k+1])) and <see cref="Labels"/> one
/// little-endian int32 label id per record. A language model's shard is one stretch of its split's token stream.
/// </summary>
public sealed record DatasetShard
{
    public required DatasetFile Tokens { get; init; }
    public required long TokenCount { get; init; }
    /// <summary>Records in the shard (classification); 0 for a language model.</summary>
    public long Records { get; init; }
    public DatasetFile? Offsets { get; init; }
    public DatasetFile? Labels { get; init; }
}
