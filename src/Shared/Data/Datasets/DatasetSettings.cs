using Dtrain.Specs;

namespace Dtrain.Data.Datasets;

/// <summary>
/// The options a dataset was prepared with, named as in a job spec (<c>task</c>, <c>data.*</c>, <c>tokenizer.*</c>,
/// <c>training.seed</c>): a job that trains from the dataset gets the same ids the in-memory path makes with these.
/// </summary>
public sealed record DatasetSettings
{
    public string Task { get; init; } = TaskKinds.LanguageModel;
    public string TextField { get; init; } = "text";
    /// <summary>Classification only (null for a language model).</summary>
    public string? LabelField { get; init; }
    /// <summary>Classification: longest record in characters (0 for a language model).</summary>
    public int MaxLength { get; init; }
    public string Overlength { get; init; } = OverlengthPolicies.Truncate;
    public string OnError { get; init; } = ErrorPolicies.Fail;
    /// <summary>The held-out share when no validation sources were given (0 when they were).</summary>
    public double ValidationFraction { get; init; }
    /// <summary>training.seed: chooses a classification split's validation records.</summary>
    public int Seed { get; init; } = 1;
    public TokenizerSpec Tokenizer { get; init; } = new();
    /// <summary>Most tokens in one shard.</summary>
    public long ShardTokens { get; init; }
}
