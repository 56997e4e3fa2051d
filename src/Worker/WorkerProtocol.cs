using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Protos.Worker;
using Dtrain.Training;
using Google.Protobuf;

namespace Dtrain.Worker;

/// <summary>
/// The worker's side of the protocol's wire form: WorkerControl's messages to the domain types
/// (<see cref="Dtrain.Cluster"/>) that <see cref="WorkerRuntime"/> takes, and its results back. Only
/// <see cref="WorkerControlService"/> uses it.
/// </summary>
public static class WorkerProtocol
{
    public static ClusterPeer FromProto(Peer p) => new(p.Rank, p.WorkerId, p.Address, p.CertificateSha256);

    public static Assignment FromProto(AssignRequest r) => new()
    {
        JobId = r.JobId, Generation = r.Generation, SpecJson = r.SpecJson, Rank = r.Rank, World = r.WorldSize,
        Peers = [.. r.Peers.Select(FromProto)],
        Tokenizer = new TokenizerState(r.TokenizerKind, r.TokenizerLowercase, [.. r.TokenizerTokens]),
        Labels = [.. r.Labels],
        TotalSteps = r.TotalSteps, StepsPerEpoch = r.StepsPerEpoch, Threads = r.Threads, StartStep = r.StartStep,
        Stage = r.Pipeline is { } p ? FromProto(p) : null,
        Dataset = r.Dataset is { } d ? new AssignedDataset(d.Uri, d.ManifestSha256) : null,
    };

    /// <summary>A neighbouring stage: its address is the message's previous/next address, its identity the peer's (when named).</summary>
    public static PipelineStageAssignment FromProto(PipelineAssignment p) => new(
        p.Stage, p.Stages, p.FirstLayer, p.LayerCount, p.Microbatches, p.Schedule, p.Replica, p.Replicas,
        Neighbour(p.Previous, p.PreviousAddress), Neighbour(p.Next, p.NextAddress));

    private static ClusterPeer? Neighbour(Peer? peer, string address) =>
        peer is null && address.Length == 0 ? null : new ClusterPeer(peer?.Rank ?? -1, peer?.WorkerId ?? "", address, peer?.CertificateSha256 ?? "");

    public static AssignReply ToProto(AssignResult r)
    {
        var reply = new AssignReply { Parameters = r.Parameters, ParameterChecksum = r.ParameterChecksum };
        reply.ParameterNames.AddRange(r.ParameterNames);
        return reply;
    }

    /// <summary>One message of a shard: its steps' rows and its part of the validation split.</summary>
    public static ShardSlice FromProto(ShardChunk c) => new(
        [.. c.Steps.Select(s => new ShardRows(s.Step, s.Rows, s.Width, [.. s.Inputs], [.. s.Targets], [.. s.Lengths], s.Count, s.ResetState) { Planned = s.Planned, RowStart = s.RowStart })],
        [.. c.ValidationTokens],
        [.. c.ValidationExamples.Select(e => new ValidationSample([.. e.Tokens], e.Label))]) {
            DatasetValidation = c.DatasetValidation, ValidationOffset = c.ValidationOffset, ValidationTotal = c.HasValidationTotal ? c.ValidationTotal : null,
        };

    public static StepCommand FromProto(RunStepRequest r) => new(r.JobId, r.Step, r.Lr, r.GlobalCount, r.ReportChecksum, r.Generation);

    public static RunStepReply ToProto(StepResult r) => new()
    {
        LossSum = r.LossSum, Count = r.Count, Rows = r.Rows, GradNorm = r.GradNorm, ParameterChecksum = r.ParameterChecksum,
        ComputeMs = r.ComputeMs, AllreduceMs = r.AllreduceMs, SquaredGradNorm = r.SquaredGradNorm, IdleMs = r.IdleMs,
        Skipped = r.Skipped, Nonfinite = r.NonFinite, DataWaitMs = r.DataWaitMs,
    };

    public static ApplyCommand FromProto(ApplyStepRequest r) => new(r.JobId, r.Step, r.Lr, r.GlobalCount, r.GlobalNorm, r.ReportChecksum, r.Skip);

    public static ApplyStepReply ToProto(ApplyResult r) => new() { ParameterChecksum = r.ParameterChecksum, Skipped = r.Skipped };

    public static EvalCommand FromProto(EvaluateRequest r) => new(r.JobId, r.BatchSize, r.MaxBatches, r.Part, r.Parts == 0 ? 1 : r.Parts);

    public static EvaluateReply ToProto(EvalSums s)
    {
        var m = s.ToMetrics();
        var reply = new EvaluateReply { Loss = m.Loss, Count = m.Count, LossSum = s.LossSum, Correct = s.Correct, Classification = s.Classification };
        if (m.Accuracy is { } a) reply.Accuracy = a;
        if (m.MacroF1 is { } f) reply.MacroF1 = f;
        if (s.Classification)
        {
            reply.TruePositives.AddRange(s.TruePositives!);
            reply.FalsePositives.AddRange(s.FalsePositives!);
            reply.FalseNegatives.AddRange(s.FalseNegatives!);
        }
        return reply;
    }

    public static StateSnapshot FromProto(GetStateRequest r) => new(r.JobId, r.Step, r.ElapsedSeconds, r.SamplesSeen, r.NonfiniteStreak);

    /// <summary>A parameter as received: its bytes are the message's (not copied).</summary>
    public static ParameterTensor FromProto(NamedTensor t) => new(t.Name, [.. t.Shape], t.Data.Memory, t.OptimizerState.Memory);

    /// <summary>A parameter as sent: its bytes are wrapped, not copied (the tensor is not changed while it is sent).</summary>
    public static NamedTensor ToProto(ParameterTensor t)
    {
        var message = new NamedTensor { Name = t.Name, Data = UnsafeByteOperations.UnsafeWrap(t.Values), OptimizerState = UnsafeByteOperations.UnsafeWrap(t.OptimizerState) };
        message.Shape.AddRange(t.Shape);
        return message;
    }

    public static LoadStateReply ToProto(LoadStateResult r) => new() { ParameterChecksum = r.ParameterChecksum, Tensors = r.Tensors };

    public static AbortReply ToProto(StepStanding s) => new() { NextStep = s.NextStep, ParameterChecksum = s.ParameterChecksum };

    /// <summary>The ring of a new generation of an elastic job.</summary>
    public static RingMembership FromProto(ReconfigureRequest r) =>
        new(r.JobId, r.Generation, r.Rank, r.WorldSize, [.. r.Peers.Select(FromProto)], r.NextStep);

    public static SyncSource FromProto(SyncStateRequest r) =>
        new(r.JobId, r.Generation, new ClusterPeer(-1, r.SourceWorkerId, r.SourceAddress, r.SourceCertificateSha256), r.NextStep);

    public static SyncStateReply ToProto(SyncResult r) => new() { ParameterChecksum = r.ParameterChecksum, Bytes = r.Bytes };
}
