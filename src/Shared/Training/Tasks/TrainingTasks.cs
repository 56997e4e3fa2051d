using Dtrain.Specs;

namespace Dtrain.Training.Tasks;

/// <summary>The tasks a spec can name (<see cref="TaskKinds"/>), each once.</summary>
public static class TrainingTasks
{
    public static LanguageModelTask LanguageModel { get; } = new();
    public static ClassificationTask Classification { get; } = new();
    public static IReadOnlyList<ITrainingTask> All { get; } = [LanguageModel, Classification];

    /// <summary>The task named <paramref name="kind"/> (a spec's "task"), or null when there is none of that name.</summary>
    public static ITrainingTask? Find(string? kind) => All.FirstOrDefault(t => t.Kind == kind);

    /// <summary>The task named <paramref name="kind"/>; an unknown name is an <see cref="ArgumentException"/> naming the known ones.</summary>
    public static ITrainingTask For(string kind) =>
        Find(kind) ?? throw new ArgumentException($"unknown task \"{kind}\"; expected {string.Join(" or ", All.Select(t => $"\"{t.Kind}\""))}", nameof(kind));

    /// <summary>The task of <paramref name="spec"/> (a validated spec names a known one).</summary>
    public static ITrainingTask For(JobSpec spec) => For(spec.Task);
}
