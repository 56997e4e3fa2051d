namespace Dtrain.Cluster;

/// <summary>
/// What a worker is sent of a job's data at once: its rows of consecutive steps, and (every rank, once per generation)
/// the validation split — tokens for a language model, examples for classification — or only the part of it the
/// rank's evaluation reads (<see cref="ValidationTotal"/>).
/// </summary>
public sealed record ShardSlice(IReadOnlyList<ShardRows> Steps, int[] ValidationTokens, IReadOnlyList<ValidationSample> ValidationExamples)
{
    public static ShardSlice Of(IReadOnlyList<ShardRows> steps) => new(steps, [], []);

    /// <summary>A dataset job: this worker evaluates on the dataset's validation split, which it reads itself.</summary>
    public bool DatasetValidation { get; init; }

    /// <summary>
    /// Set: the validation tokens or examples sent are only the part of the split this rank evaluates, starting at item
    /// <see cref="ValidationOffset"/> of the split's <see cref="ValidationTotal"/> (tokens, or examples); null: they are the whole split.
    /// </summary>
    public long? ValidationTotal { get; init; }
    public long ValidationOffset { get; init; }
}
