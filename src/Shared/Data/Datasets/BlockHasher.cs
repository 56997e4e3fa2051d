using System.Security.Cryptography;

namespace Dtrain.Data.Datasets;

/// <summary>
/// The SHA-256 of each block of <c>blockBytes</c> bytes of a stream fed in pieces of any size, as format version 2
/// records them (<see cref="DatasetFile.BlockSha256"/>): the writer of a shard and the eager check of a whole file share it.
/// </summary>
internal sealed class BlockHasher(int blockBytes) : IDisposable
{
    readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    int fill;

    /// <summary>How many blocks have ended so far.</summary>
    public long Blocks { get; private set; }

    /// <summary>Feeds <paramref name="data"/>; <paramref name="ended"/> gets each block's index and SHA-256 (lowercase hex) as the block completes.</summary>
    public void Append(ReadOnlySpan<byte> data, Action<long, string> ended)
    {
        while (!data.IsEmpty)
        {
            var n = Math.Min(data.Length, blockBytes - fill);
            hash.AppendData(data[..n]);
            fill += n;
            data = data[n..];
            if (fill == blockBytes) End(ended);
        }
    }

    /// <summary>Ends the last, short block, if any bytes are in it.</summary>
    public void Finish(Action<long, string> ended)
    {
        if (fill > 0) End(ended);
    }

    void End(Action<long, string> ended)
    {
        ended(Blocks++, Convert.ToHexStringLower(hash.GetHashAndReset()));
        fill = 0;
    }

    public void Dispose() => hash.Dispose();
}
