namespace Dtrain.Data.Storage;

/// <summary>
/// A place in S3-compatible object storage, <c>s3://bucket/prefix</c>: the bucket and a key prefix that is empty or
/// ends with '/' (the dataset's "directory").
/// </summary>
public sealed record S3Location(string Bucket, string Prefix)
{
    public const string Scheme = "s3://";

    /// <summary>Whether <paramref name="uri"/> names S3 (starts with <c>s3://</c>).</summary>
    public static bool IsS3(string uri) => uri.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase);

    /// <summary>Parses <c>s3://bucket[/prefix]</c>; an <see cref="ArgumentException"/> names the URI and what is wrong.</summary>
    public static S3Location Parse(string uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        if (!IsS3(uri)) throw new ArgumentException($"\"{uri}\" is not an S3 URI (s3://bucket/prefix)", nameof(uri));
        var rest = uri[Scheme.Length..];
        var slash = rest.IndexOf('/');
        var bucket = slash < 0 ? rest : rest[..slash];
        var prefix = slash < 0 ? "" : rest[(slash + 1)..];
        // Bucket names: 3-63 of lowercase letters, digits, '.', '-', starting and ending with a letter or digit.
        if (bucket.Length is < 3 or > 63 || !bucket.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '.' or '-')
            || !char.IsAsciiLetterOrDigit(bucket[0]) || !char.IsAsciiLetterOrDigit(bucket[^1]))
            throw new ArgumentException($"{uri}: \"{bucket}\" is not a bucket name (3 to 63 lowercase letters, digits, '.' and '-')", nameof(uri));
        if (prefix.Length > 0 && !prefix.EndsWith('/')) prefix += "/";
        if (prefix.Length > 0 && prefix[..^1].Split('/').Any(p => p is "" or "." or ".."))
            throw new ArgumentException($"{uri}: the prefix has an empty, '.' or '..' segment", nameof(uri));
        return new S3Location(bucket, prefix);
    }

    /// <summary>The object key of <paramref name="name"/> under the prefix.</summary>
    public string KeyOf(string name) => Prefix + name;

    /// <summary><c>s3://bucket/key</c> of <paramref name="name"/>.</summary>
    public string UriOf(string name) => $"{Scheme}{Bucket}/{KeyOf(name)}";

    public override string ToString() => Prefix.Length == 0 ? $"{Scheme}{Bucket}" : $"{Scheme}{Bucket}/{Prefix.TrimEnd('/')}";
}
