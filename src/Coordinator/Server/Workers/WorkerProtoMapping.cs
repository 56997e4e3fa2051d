using Dtrain.Cluster;
using Dtrain.Protos.Worker;
using Google.Protobuf;

namespace Dtrain.Server;

/// <summary>
/// The coordinator's side of the worker protocol's wire form: the domain types (<see cref="Dtrain.Cluster"/>) to and
/// from WorkerControl's messages. Only the worker handle over gRPC uses it (the in-process one of the tests calls the worker runtime with the domain types).
/// </summary>
public static class WorkerProtoMapping
{
    public static Peer ToProto(this ClusterPeer p) => new() { Rank = p.Rank, WorkerId = p.WorkerId, Address = p.Address, CertificateSha256 = p.CertificateSha256 };

    public static AssignRequest ToProto(this Assignment a)
    {
        var request = new AssignRequest
        {
            JobId = a.JobId, Generation = a.Generation, SpecJson = a.SpecJson, Rank = a.Rank, WorldSize = a.World,
            TokenizerKind = a.Tokenizer.Kind, TokenizerLowercase = a.Tokenizer.Lowercase,
            TotalSteps = a.TotalSteps, StepsPerEpoch = a.StepsPerEpoch, Threads = a.Threads, StartStep = a.StartStep,
        };
        request.Peers.AddRange(a.Peers.Select(ToProto));
        request.TokenizerTokens.AddRange(a.Tokenizer.Tokens);
        request.Labels.AddRange(a.Labels);
        if (a.Dataset is { } d) request.Dataset = new Protos.Worker.DatasetRef { Uri = d.Uri, ManifestSha256 = d.ManifestSha256 };
        if (a.Stage is { } s)
        {
            request.Pipeline = new PipelineAssignment
            {
                Stage = s.Stage, Stages = s.Stages, FirstLayer = s.FirstLayer, LayerCount = s.LayerCount, Microbatches = s.Microbatches,
                Schedule = s.Schedule, Replica = s.Replica, Replicas = s.Replicas,
                PreviousAddress = s.Previous?.Address ?? "", NextAddress = s.Next?.Address ?? "",
                Previous = s.Previous?.ToProto(), Next = s.Next?.ToProto(),
            };
        }
        return request;
    }

    public static AssignResult FromProto(AssignReply r) => new(r.Parameters, r.ParameterChecksum, [.. r.ParameterNames]);

    /// <summary>The slice in messages of at most <paramref name="chunkValues"/> values each (validation in chunks of its own); at least one.</summary>
    public static List<ShardChunk> ToChunks(this ShardSlice slice, string jobId, int chunkValues)
    {
        var chunks = new List<ShardChunk>();
        long size = 0;
        foreach (var rows in slice.Steps)
        {
            var s = new ShardStep { Step = rows.Step, Rows = rows.Rows, Width = rows.Width, Count = rows.Count, ResetState = rows.ResetState, Planned = rows.Planned, RowStart = rows.RowStart };
            s.Inputs.AddRange(rows.Inputs);
            s.Targets.AddRange(rows.Targets);
            if (rows.Lengths is not null) s.Lengths.AddRange(rows.Lengths);
            if (chunks.Count == 0 || size + s.Inputs.Count + s.Targets.Count > chunkValues)
            {
                chunks.Add(new ShardChunk { JobId = jobId });
                size = 0;
            }
            chunks[^1].Steps.Add(s);
            size += s.Inputs.Count + s.Targets.Count;
        }
        // Only this rank's part of the validation split follows: where it starts, and the whole split's length.
        if (slice.ValidationTotal is { } total) chunks.Add(new ShardChunk { JobId = jobId, ValidationOffset = slice.ValidationOffset, ValidationTotal = total });
        foreach (var part in slice.ValidationTokens.Chunk(chunkValues))
        {
            var c = new ShardChunk { JobId = jobId };
            c.ValidationTokens.AddRange(part);
            chunks.Add(c);
        }
        var current = new ShardChunk { JobId = jobId };
        size = 0;
        foreach (var sample in slice.ValidationExamples)
        {
            var ex = new ValidationExample { Label = sample.Label };
            ex.Tokens.AddRange(sample.Tokens);
            if (size + ex.Tokens.Count > chunkValues && current.ValidationExamples.Count > 0)
            {
                chunks.Add(current);
                current = new ShardChunk { JobId = jobId };
                size = 0;
            }
            current.ValidationExamples.Add(ex);
            size += ex.Tokens.Count;
        }
        if (current.ValidationExamples.Count > 0) chunks.Add(current);
        if (slice.DatasetValidation) chunks.Add(new ShardChunk { JobId = jobId, DatasetValidation = true });
        // At least one message, naming the job: the worker refuses a stream without one (it lost its messages on the way).
        if (chunks.Count == 0) chunks.Add(new ShardChunk { JobId = jobId });
        return chunks;
    }

    public static RunStepRequest ToProto(this StepCommand c) =>
        new() { JobId = c.JobId, Step = c.Step, Lr = c.Lr, GlobalCount = c.GlobalCount, ReportChecksum = c.ReportChecksum, Generation = c.Generation };

    public static StepResult FromProto(RunStepReply r) => new()
    {
        LossSum = r.LossSum, Count = r.Count, Rows = r.Rows, GradNorm = r.GradNorm, ParameterChecksum = r.ParameterChecksum,
        ComputeMs = r.ComputeMs, AllreduceMs = r.AllreduceMs, SquaredGradNorm = r.SquaredGradNorm, IdleMs = r.IdleMs,
        Skipped = r.Skipped, NonFinite = r.Nonfinite, DataWaitMs = r.DataWaitMs,
    };

    public static ApplyStepRequest ToProto(this ApplyCommand c) =>
        new() { JobId = c.JobId, Step = c.Step, Lr = c.Lr, GlobalCount = c.GlobalCount, GlobalNorm = c.GlobalNorm, ReportChecksum = c.ReportChecksum, Skip = c.Skip };

    public static ApplyResult FromProto(ApplyStepReply r) => new(r.ParameterChecksum, r.Skipped);

    public static EvaluateRequest ToProto(this EvalCommand c) => new() { JobId = c.JobId, BatchSize = c.BatchSize, MaxBatches = c.MaxBatches, Part = c.Part, Parts = c.Parts };

    public static Training.EvalSums FromProto(EvaluateReply r) => r.Classification
        ? new(r.LossSum, r.Count, r.Correct, [.. r.TruePositives], [.. r.FalsePositives], [.. r.FalseNegatives])
        : new(r.LossSum, r.Count);

    public static GetStateRequest ToProto(this StateSnapshot s) =>
        new() { JobId = s.JobId, Step = s.Step, ElapsedSeconds = s.ElapsedSeconds, SamplesSeen = s.SamplesSeen, NonfiniteStreak = s.NonFiniteStreak };

    /// <summary>A parameter as sent: its bytes are wrapped, not copied (the tensor is not changed while it is sent).</summary>
    public static NamedTensor ToProto(this ParameterTensor t)
    {
        var message = new NamedTensor { Name = t.Name, Data = UnsafeByteOperations.UnsafeWrap(t.Values), OptimizerState = UnsafeByteOperations.UnsafeWrap(t.OptimizerState) };
        message.Shape.AddRange(t.Shape);
        return message;
    }

    public static ParameterTensor FromProto(NamedTensor t) => new(t.Name, [.. t.Shape], t.Data.Memory, t.OptimizerState.Memory);

    public static LoadStateResult FromProto(LoadStateReply r) => new(r.ParameterChecksum, r.Tensors);

    public static StepStanding FromProto(AbortReply r) => new(r.NextStep, r.ParameterChecksum);

    public static ReconfigureRequest ToProto(this RingMembership m)
    {
        var request = new ReconfigureRequest { JobId = m.JobId, Generation = m.Generation, Rank = m.Rank, WorldSize = m.World, NextStep = m.NextStep };
        request.Peers.AddRange(m.Peers.Select(ToProto));
        return request;
    }

    public static SyncStateRequest ToProto(this SyncSource s) => new()
    {
        JobId = s.JobId, Generation = s.Generation, SourceAddress = s.Source.Address, SourceWorkerId = s.Source.WorkerId,
        SourceCertificateSha256 = s.Source.CertificateSha256, NextStep = s.NextStep,
    };

    public static SyncResult FromProto(SyncStateReply r) => new(r.ParameterChecksum, r.Bytes);
}
