using Dtrain.Cluster;
using Dtrain.Runtime;

namespace Dtrain.Server;

/// <summary>
/// Puts a resumed job's checkpoint into its freshly assigned workers: each gets the parameters (and their optimizer
/// state) it reported holding at Assign — the whole model for a data-parallel replica, its layers for a pipeline
/// stage — and must report back the checksum of exactly those values.
/// </summary>
public static class ResumeLoader
{
    public static async Task LoadAsync(JobRecord job, PreparedJob prepared, JobWorkers workers, IReadOnlyList<AssignResult> assigned, CancellationToken cancel)
    {
        if (job.Resume is not { } resume) return;
        List<ParameterTensor> tensors;
        using (var torch = new TorchThread($"resume-{job.Id}", 1))
            (tensors, _) = await torch.RunAsync(() => resume.Tensors(job.Spec)).ConfigureAwait(false);
        var byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        IEnumerable<ParameterTensor> For(int rank) => assigned[rank].ParameterNames.Select(n => byName.TryGetValue(n, out var t) ? t
            : throw new JobFailure($"worker {workers.Members[rank].Id} holds parameter {n}, which the checkpoint {resume.Path} does not have"));
        var replies = await workers.LoadStateAsync(job.Id, For, prepared.StartStep, cancel).ConfigureAwait(false);
        for (var rank = 0; rank < replies.Length; rank++)
        {
            var expected = assigned[rank].ParameterNames.Sum(n => Sum(byName[n]));
            if (replies[rank].Tensors != assigned[rank].ParameterNames.Count || !Distributed.ParameterChecksums.Agree(replies[rank].ParameterChecksum, expected))
                throw new JobFailure($"worker {workers.Members[rank].Id} loaded the checkpoint's state wrongly: checksum {replies[rank].ParameterChecksum:R} of {replies[rank].Tensors} tensors, expected {expected:R} of {assigned[rank].ParameterNames.Count}");
        }
        job.Log($"resumed from {resume.From} ({resume.Path}) at step {prepared.StartStep}: {tensors.Count} parameter tensors and their optimizer state loaded into {replies.Length} worker(s)");
    }

    private static double Sum(ParameterTensor t)
    {
        double sum = 0;
        foreach (var v in t.Floats) sum += v;
        return sum;
    }
}
