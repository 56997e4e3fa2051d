using Dtrain.Data;

namespace Dtrain.Cluster;

/// <summary>
/// What a worker is told to hold for a job: its rank in a world of <see cref="World"/> ranks of one membership
/// generation, every ring peer in rank order, the spec (as on the submitting machine), the tokenizer and labels,
/// the step plan, and — for a pipeline job — its <see cref="Stage"/> (null: a whole-model data-parallel replica).
/// </summary>
public sealed record Assignment
{
    public required string JobId { get; init; }
    public required long Generation { get; init; }
    public required string SpecJson { get; init; }
    public required int Rank { get; init; }
    public required int World { get; init; }
    /// <summary>Every rank of the ring this worker joins, in rank order.</summary>
    public required IReadOnlyList<ClusterPeer> Peers { get; init; }
    public required TokenizerState Tokenizer { get; init; }
    public required IReadOnlyList<string> Labels { get; init; }
    public required long TotalSteps { get; init; }
    public required long StepsPerEpoch { get; init; }
    /// <summary>Torch threads; 0 = the worker's default.</summary>
    public int Threads { get; init; }
    /// <summary>The first step this job runs (a resumed job starts at its checkpoint's step).</summary>
    public long StartStep { get; init; }
    public PipelineStageAssignment? Stage { get; init; }
    /// <summary>A job that trains from a prepared dataset: the worker opens it and reads its rows itself (null: rows are sent).</summary>
    public AssignedDataset? Dataset { get; init; }
}

/// <summary>A prepared dataset as a job names it: its URI and the SHA-256 of the manifest the job was planned from.</summary>
public sealed record AssignedDataset(string Uri, string ManifestSha256);
