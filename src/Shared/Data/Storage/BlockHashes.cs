namespace Dtrain.Data.Storage;

/// <summary>
/// The SHA-256 (lowercase hex) of each block of <see cref="BlockBytes"/> bytes of a file, in order (the last block
/// short), as a dataset's manifest records them (format version 2): a read given them fetches the file by these blocks
/// and checks each block as it arrives, before it is cached or used.
/// </summary>
public sealed record BlockHashes(int BlockBytes, IReadOnlyList<string> Sha256);
