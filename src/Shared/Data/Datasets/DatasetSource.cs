namespace Dtrain.Data.Datasets;

/// <summary>A source file a dataset was prepared from, as given (path), its split, format and compression, and its size and SHA-256 as stored (compressed bytes for .gz/.zst).</summary>
public sealed record DatasetSource(string Path, string Split, string Format, string Compression, long Bytes, string Sha256);
