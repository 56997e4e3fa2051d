namespace Dtrain.Checkpoints;

/// <summary>
/// A checkpoint file that cannot be trusted: bad magic, unsupported version, truncated, checksum mismatch, ... or,
/// with an intact file, a section whose contents are malformed (<see cref="Section"/> names it).
/// </summary>
public sealed class CorruptCheckpointException : Exception
{
    public CorruptCheckpointException(string path, string reason)
        : base($"corrupt checkpoint {path}: {reason}")
    {
        Path = path;
        Reason = reason;
    }

    public CorruptCheckpointException(string path, string section, string reason, Exception? inner = null)
        : base($"corrupt checkpoint {path}: section {section}: {reason}", inner)
    {
        Path = path;
        Section = section;
        Reason = $"section {section}: {reason}";
    }

    /// <summary>The file (or name given for the stream) that was being read.</summary>
    public string Path { get; }

    /// <summary>The malformed section (model.bin, state.json, ...), or null when the file itself is damaged.</summary>
    public string? Section { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Reason { get; }
}
