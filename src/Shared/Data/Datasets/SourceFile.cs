namespace Dtrain.Data.Datasets;

/// <summary>One input of <c>dtrain prepare</c>: its path, split, format (text, jsonl, csv) and compression ("none", "gzip", "zstd").</summary>
public sealed record SourceFile(string Path, string Split, string Format, string Compression);
