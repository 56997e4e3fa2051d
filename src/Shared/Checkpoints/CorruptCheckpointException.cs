namespace Dtrain.Checkpoints;

/// <summary>A checkpoint file that cannot be trusted: bad magic, unsupported version, truncated, checksum mismatch, ...</summary>
public sealed class CorruptCheckpointException(string path, string reason)
    : Exception($"corrupt checkpoint {path}: {reason}")
{
    /// <summary>The file (or name given for the stream) that was being read.</summary>
    public string Path { get; } = path;

    /// <summary>What is wrong, without the file name.</summary>
    public string Reason { get; } = reason;
}
