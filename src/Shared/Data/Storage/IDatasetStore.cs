namespace Dtrain.Data.Storage;

/// <summary>
/// The files of one dataset, read by name relative to its root: a directory on storage the workers share (a compose
/// volume, a Kubernetes ReadOnlyMany volume, NFS; <see cref="LocalDatasetStore"/>, memory-mapped) or a prefix in an
/// S3-compatible bucket (<see cref="S3DatasetStore"/>: ranged reads through a bounded local cache, with read-ahead and
/// retries). <see cref="DatasetStores.Open"/> picks one from a URI. Every failure is a <see cref="DatasetStorageException"/>
/// naming the file's URI and what failed.
/// </summary>
public interface IDatasetStore : IDisposable
{
    /// <summary>The dataset's root as given: a directory path or <c>s3://bucket/prefix</c>.</summary>
    string Root { get; }

    /// <summary>The URI of <paramref name="name"/> under the root, as messages name it.</summary>
    string UriOf(string name);

    /// <summary>Every file under the root (recursively), names relative to it with '/' separators, in ordinal order.</summary>
    Task<IReadOnlyList<StoredFile>> ListAsync(CancellationToken cancellationToken = default);

    /// <summary>The size of <paramref name="name"/> in bytes.</summary>
    Task<long> SizeAsync(string name, CancellationToken cancellationToken = default);

    /// <summary>
    /// Fills <paramref name="destination"/> with the bytes of <paramref name="name"/> from <paramref name="offset"/> on.
    /// A range past the end of the file fails (the file is shorter than its reader expects: truncated).
    /// </summary>
    Task ReadAsync(string name, long offset, Memory<byte> destination, CancellationToken cancellationToken = default);

    /// <summary>
    /// A local path holding the whole of <paramref name="name"/> (the file itself for a local store, a cached copy for S3),
    /// checked against <paramref name="sha256"/> (lowercase or uppercase hex) when one is given.
    /// </summary>
    Task<string> LocalFileAsync(string name, string? sha256 = null, CancellationToken cancellationToken = default);
}
