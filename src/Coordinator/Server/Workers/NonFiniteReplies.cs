using Dtrain.Cluster;
using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// Reads a step's replies for a non-finite loss or gradient and says what it was and where, for the skip line and the
/// failure message. Data-parallel replicas decide to skip themselves, alike, from the same reduced values (a
/// disagreement would mean diverged replicas and fails the job); for a pipeline the coordinator decides, from every
/// stage's squared gradient norm and every last stage's loss.
/// </summary>
public static class NonFiniteReplies
{
    /// <summary>Data-parallel step <paramref name="done"/> (1-based): null when every replica applied it, else what was not finite.</summary>
    public static string? DataParallel(IReadOnlyList<StepResult> replies, JobWorkers workers, long done, double loss)
    {
        var skipped = replies.Count(r => r.Skipped);
        if (skipped == 0) return null;
        if (skipped != replies.Count)
        {
            string Ranks(bool s) => string.Join(", ", replies.Select((r, rank) => (r, rank)).Where(x => x.r.Skipped == s).Select(x => $"rank {x.rank} ({workers.Members[x.rank].Id})"));
            throw new JobFailure($"replicas disagreed on step {done}: {Ranks(true)} skipped it for a non-finite {replies.First(r => r.Skipped).NonFinite}, {Ranks(false)} applied it") { Terminal = true };
        }
        if (replies[0].NonFinite == NonFiniteCauses.Loss || !double.IsFinite(loss))
        {
            var from = replies.Select((r, rank) => (r, rank)).Where(x => !double.IsFinite(x.r.LossSum)).Select(x => $"rank {x.rank}, worker {workers.Members[x.rank].Id}").ToList();
            return $"non-finite loss ({NonFiniteSteps.G(loss)}{(from.Count > 0 ? $" from {string.Join("; ", from)}" : "")})";
        }
        return $"non-finite gradient (norm {NonFiniteSteps.G(replies[0].GradNorm)} after summing over the replicas)";
    }

    /// <summary>
    /// Pipeline step: null when the loss (summed over the last stages <paramref name="lastStages"/>) and the global
    /// gradient norm are finite, else what was not (every stage is then told to skip).
    /// </summary>
    public static string? Pipeline(IReadOnlyList<StepResult> replies, JobWorkers workers, int stages, IReadOnlyList<int> lastStages, double loss, double norm)
    {
        if (!double.IsFinite(loss))
        {
            var from = lastStages.Where(s => !double.IsFinite(replies[s].LossSum)).Select(s => $"replica {s / stages}, worker {workers.Members[s].Id}").ToList();
            return $"non-finite loss ({NonFiniteSteps.G(loss)}{(from.Count > 0 ? $" from {string.Join("; ", from)}" : "")})";
        }
        if (double.IsFinite(norm)) return null;
        var at = Enumerable.Range(0, replies.Count).Where(s => !double.IsFinite(replies[s].SquaredGradNorm)).Select(s => $"stage {s % stages}").Distinct().ToList();
        return $"non-finite gradient (norm {NonFiniteSteps.G(norm)}{(at.Count > 0 ? $" in {string.Join(", ", at)}" : "")})";
    }
}
