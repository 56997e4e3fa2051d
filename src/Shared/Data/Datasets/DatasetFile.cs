namespace Dtrain.Data.Datasets;

/// <summary>One file of a prepared dataset as the manifest records it: its name inside the dataset directory, size and SHA-256 (lowercase hex).</summary>
public sealed record DatasetFile(string Name, long Bytes, string Sha256);
