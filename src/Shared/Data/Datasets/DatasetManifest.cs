namespace Dtrain.Data.Datasets;

/// <summary>
/// manifest.json of a prepared dataset (docs/data.md): written last, after every other file is on disk, so a dataset
/// without it is not whole. Versioned by <see cref="Version"/>; a reader refuses a version it does not know.
/// </summary>
public sealed record DatasetManifest
{
    /// <summary>Always <see cref="DatasetLayout.FormatName"/>.</summary>
    public string Format { get; init; } = DatasetLayout.FormatName;
    public int Version { get; init; } = DatasetLayout.Version;
    /// <summary>"uint8" (vocabulary of at most 256), "uint16" (at most 65,536) or "uint32": the shards' ids, little-endian.</summary>
    public required string TokenDtype { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>The tokenizer, serialized as in a checkpoint's tokenizer.json.</summary>
    public required DatasetFile Tokenizer { get; init; }
    /// <summary>Class names in label-id order (classification); empty for a language model.</summary>
    public IReadOnlyList<string> Labels { get; init; } = [];
    public required DatasetSettings Settings { get; init; }
    public required IReadOnlyList<DatasetSource> Sources { get; init; }
    public required DatasetSplit Train { get; init; }
    public required DatasetSplit Validation { get; init; }
    /// <summary>Records read, skipped (on_error/overlength "skip") and truncated, with up to 5 examples of skipped ones.</summary>
    public DataReport Report { get; init; } = DataReport.Empty;
}
