using Dtrain.Cluster;
using Dtrain.Specs;

namespace Dtrain.Server;

/// <summary>
/// What every worker of a job is told, whichever driver runs it: the spec as on the submitting machine (workers read no
/// data files, and the checkpoints they capture keep it), the tokenizer, the labels and the step plan; a rank's place
/// (rank, world, generation, peers, pipeline stage) is added per worker.
/// </summary>
public sealed class JobAssignments(JobRecord job, PreparedJob prepared)
{
    private readonly string specJson = JobSpecSerializer.Serialize(job.SpecOnClient);
    private readonly Data.TokenizerState tokenizer = prepared.Data.Tokenizer.ToState();
    private readonly IReadOnlyList<string> labels = [.. prepared.Data.Labels.Names];

    public Assignment For(int rank, int world, long generation, long startStep, IReadOnlyList<ClusterPeer> peers, PipelineStageAssignment? stage = null) => new()
    {
        JobId = job.Id, Generation = generation, SpecJson = specJson, Rank = rank, World = world, Peers = peers,
        Tokenizer = tokenizer, Labels = labels, TotalSteps = prepared.TotalSteps, StepsPerEpoch = prepared.Source.StepsPerEpoch,
        Threads = job.Spec.Training.Threads, StartStep = startStep, Stage = stage,
        Dataset = prepared.Data.Dataset is { } d ? new AssignedDataset(d.Uri, d.ManifestSha256) : null,
    };
}
