namespace Dtrain.Cluster;

/// <summary>
/// What a worker is sent of a job's data at once: its rows of consecutive steps, and (rank 0, once per generation)
/// the validation split — tokens for a language model, examples for classification.
/// </summary>
public sealed record ShardSlice(IReadOnlyList<ShardRows> Steps, int[] ValidationTokens, IReadOnlyList<ValidationSample> ValidationExamples)
{
    public static ShardSlice Of(IReadOnlyList<ShardRows> steps) => new(steps, [], []);

    /// <summary>A dataset job: this worker evaluates on the dataset's validation split, which it reads itself.</summary>
    public bool DatasetValidation { get; init; }
}
