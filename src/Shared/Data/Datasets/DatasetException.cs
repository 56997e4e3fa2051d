namespace Dtrain.Data.Datasets;

/// <summary>A prepared dataset that cannot be used: no manifest, an unknown version, a missing, truncated or altered file — naming the dataset and the file.</summary>
public sealed class DatasetException(string dataset, string? file, string problem)
    : Exception(file is null ? $"dataset {dataset}: {problem}" : $"dataset {dataset}: {file} {problem}")
{
    public string Dataset { get; } = dataset;
    /// <summary>The file inside the dataset (a shard, the manifest, the tokenizer), or null for the dataset as a whole.</summary>
    public string? File { get; } = file;
    public string Problem { get; } = problem;
}
