namespace Dtrain.Data.Datasets;

/// <summary>
/// One file of a prepared dataset as the manifest records it: its name inside the dataset directory, size and SHA-256
/// (lowercase hex). From format version 2 a shard's files (tokens, offsets, labels) also record <see cref="BlockSha256"/>:
/// the SHA-256 of each block of <see cref="BlockBytes"/> bytes in order (the last one short), so a reader can check the
/// blocks it reads alone; null for the tokenizer and for every file of a version 1 dataset.
/// </summary>
public sealed record DatasetFile(string Name, long Bytes, string Sha256)
{
    /// <summary>The block size of <see cref="BlockSha256"/> (<see cref="DatasetLayout.BlockBytes"/> as prepared), or null.</summary>
    public int? BlockBytes { get; init; }
    /// <summary>The SHA-256 (lowercase hex) of each block, in order: ceil(<see cref="Bytes"/> / <see cref="BlockBytes"/>) of them; or null.</summary>
    public IReadOnlyList<string>? BlockSha256 { get; init; }

    /// <summary>Whether the blocks' hashes are recorded (a shard file of a version 2 dataset).</summary>
    public bool HasBlocks => BlockBytes is not null && BlockSha256 is not null;

    /// <summary>How many blocks of <paramref name="blockBytes"/> a file of <paramref name="bytes"/> has (the last one short; none when empty).</summary>
    public static long BlockCount(long bytes, long blockBytes) => (bytes + blockBytes - 1) / blockBytes;

    /// <summary>Equal when every field is, the block hashes compared one by one.</summary>
    public bool Equals(DatasetFile? other) =>
        other is not null && Name == other.Name && Bytes == other.Bytes && Sha256 == other.Sha256 && BlockBytes == other.BlockBytes
        && (ReferenceEquals(BlockSha256, other.BlockSha256) || (BlockSha256 is not null && other.BlockSha256 is not null && BlockSha256.SequenceEqual(other.BlockSha256)));

    public override int GetHashCode() => HashCode.Combine(Name, Bytes, Sha256, BlockBytes, BlockSha256?.Count);

    /// <summary>"block 5 (bytes 41943040-50331647)": block <paramref name="index"/> as messages name it.</summary>
    public string DescribeBlock(long index)
    {
        var start = index * BlockBytes!.Value;
        return $"block {index} (bytes {start}-{Math.Min(Bytes, start + BlockBytes.Value) - 1})";
    }
}
