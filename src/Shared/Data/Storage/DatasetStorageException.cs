namespace Dtrain.Data.Storage;

/// <summary>
/// A dataset file that could not be listed, read or written: names the file's URI (<c>s3://bucket/key</c> or a path)
/// and what failed. <see cref="Attempts"/> is how many times it was tried (1 when the failure is not transient).
/// </summary>
public sealed class DatasetStorageException(string uri, string problem, int attempts = 1, Exception? inner = null)
    : IOException($"{uri}: {problem}", inner)
{
    public string Uri { get; } = uri;
    public string Problem { get; } = problem;
    public int Attempts { get; } = attempts;
    /// <summary>The block whose bytes did not match their SHA-256 (<see cref="BlockHashes"/>), or null for any other failure.</summary>
    public long? MismatchedBlock { get; init; }
}
