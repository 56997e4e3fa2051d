namespace Dtrain.Data.Storage;

/// <summary>Opens the <see cref="IDatasetStore"/> a dataset's root names.</summary>
public static class DatasetStores
{
    /// <summary>
    /// <c>s3://bucket/prefix</c>: an <see cref="S3DatasetStore"/> (options from the environment unless given);
    /// <c>file:///path</c> or a plain path: a <see cref="LocalDatasetStore"/>. Any other scheme is refused, naming it.
    /// </summary>
    public static IDatasetStore Open(string root, S3StoreOptions? s3 = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(root);
        if (S3Location.IsS3(root)) return new S3DatasetStore(root, s3);
        if (root.StartsWith("file://", StringComparison.OrdinalIgnoreCase)) return new LocalDatasetStore(new Uri(root).LocalPath);
        var colon = root.IndexOf("://", StringComparison.Ordinal);
        if (colon > 0 && root[..colon].All(char.IsAsciiLetterOrDigit))
            throw new ArgumentException($"{root}: unsupported storage scheme \"{root[..colon]}://\" (a directory path, file:// or s3://bucket/prefix)", nameof(root));
        return new LocalDatasetStore(root);
    }
}
