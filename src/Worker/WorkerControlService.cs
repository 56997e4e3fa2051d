using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Distributed.Pipeline;
using Dtrain.Protos.Worker;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>The coordinator's handle on this worker: assign a job, load its shard, run steps, evaluate, hand over state, release.</summary>
public sealed class WorkerControlService(WorkerSlot state, IRingConnector rings, WorkerOptions options, StageMailboxes mailboxes, ILogger<WorkerControlService> log,
    WorkerSecurity? security = null) : WorkerControl.WorkerControlBase
{
    public override async Task<AssignReply> Assign(AssignRequest request, ServerCallContext context)
    {
        if (request.WorldSize < 1 || request.Rank < 0 || request.Rank >= request.WorldSize)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"rank {request.Rank} outside world of {request.WorldSize}"));
        if (request.Peers.Count != request.WorldSize)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"{request.Peers.Count} peers for a world of {request.WorldSize}"));
        JobSpec spec;
        try
        {
            spec = JobSpecSerializer.Parse(request.SpecJson, $"job {request.JobId}");
        }
        catch (SpecException e)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, e.Message));
        }
        ITokenizer tokenizer;
        LabelSet labels;
        try
        {
            tokenizer = TokenizerFactory.FromState(new TokenizerState(request.TokenizerKind, request.TokenizerLowercase, [.. request.TokenizerTokens]));
            labels = new LabelSet(request.Labels);
        }
        catch (InvalidDataException e)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, e.Message));
        }
        if (spec.Task == TaskKinds.Classification && labels.Count < 2)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"classification job with {labels.Count} labels"));

        CheckMemoryBudget(request, spec, tokenizer.VocabSize, labels.Count);
        await state.ReleaseAsync("replaced by a new assignment").ConfigureAwait(false);
        // The spec's training.threads, but never more than the CPUs this process may use (a container's quota):
        // more torch threads than CPUs only makes them wait on each other.
        var threads = request.Threads > 0 ? Math.Min(request.Threads, Environment.ProcessorCount) : options.ResolvedThreads;
        if (request.Threads > threads)
            log.LogInformation("job {JobId}: training.threads {Requested} capped at the {Cpus} CPU(s) this worker may use", request.JobId, request.Threads, Environment.ProcessorCount);
        var device = DeviceSelector.Resolve(options.Device, m => log.LogWarning("{Message}", m));
        var ring = await rings.ConnectAsync(request, context.CancellationToken).ConfigureAwait(false);
        var torch = new TorchThread($"torch-{request.JobId}", threads);
        if (request.Pipeline is { } pipeline) return await AssignStageAsync(request, pipeline, spec, tokenizer, labels, device, ring, torch, threads).ConfigureAwait(false);
        var replica = await torch.RunAsync(() => new DataParallelReplica(spec, tokenizer.VocabSize, labels.Count, device, ring.Reducer)).ConfigureAwait(false);
        var job = new ReplicaJob(request, spec, tokenizer, labels, replica, null, ring, torch);
        state.Current = job;
        log.LogInformation("assigned job {JobId} generation {Generation}: rank {Rank}/{World}, {Parameters} parameters, {Threads} thread(s); allocator: {Allocator}",
            request.JobId, request.Generation, request.Rank, request.WorldSize, replica.ParameterCount, threads, NativeAllocator.Describe());
        return new AssignReply { Parameters = replica.ParameterCount, ParameterChecksum = await torch.RunAsync(replica.ParameterChecksum).ConfigureAwait(false) };
    }

    /// <summary>Refuses an assignment whose estimated memory (the whole model, or this stage) exceeds Worker:MemoryBudgetMb.</summary>
    private void CheckMemoryBudget(AssignRequest request, JobSpec spec, int vocabSize, int classes)
    {
        if (options.MemoryBudgetMb <= 0) return;
        var outputs = spec.Task == TaskKinds.LanguageModel ? vocabSize : classes;
        var layout = ModelLayout.Of(spec.Model, vocabSize, outputs);
        StageMemory need;
        string what;
        if (request.Pipeline is { } p && p.Stages > 0 && p.FirstLayer >= 0 && p.LayerCount >= 1 && p.FirstLayer + p.LayerCount <= layout.Layers.Count)
        {
            var last = p.Stage == p.Stages - 1;
            var parameters = layout.Layers.Skip(p.FirstLayer).Take(p.LayerCount).Sum() + (p.Stage == 0 ? layout.Embedding : 0) + (last ? layout.Head : 0);
            var plan = new StagePlan(p.Stage, p.FirstLayer, p.LayerCount, parameters, p.Stage == 0, last);
            var rows = Math.Max(1, spec.Training.BatchSize / Math.Max(1, p.Replicas) / Math.Max(1, p.Microbatches));
            need = PipelinePlan.Estimate(spec, plan, rows, Math.Min(p.Stages - p.Stage, Math.Max(1, p.Microbatches)), outputs);
            what = $"pipeline stage {p.Stage} (layers {p.FirstLayer}-{p.FirstLayer + p.LayerCount - 1})";
        }
        else
        {
            var whole = new StagePlan(0, 0, layout.Layers.Count, layout.Total, true, true);
            need = PipelinePlan.Estimate(spec, whole, Math.Max(1, spec.Training.BatchSize / Math.Max(1, request.WorldSize)), 1, outputs);
            what = "the whole model";
        }
        var budget = (long)(options.MemoryBudgetMb * 1e6);
        if (need.Total > budget)
            throw new RpcException(new Status(StatusCode.ResourceExhausted,
                $"job {request.JobId}: {what} needs about {PipelinePlan.Mb(need.Total)} MB (weights {PipelinePlan.Mb(need.Weights)}, gradients {PipelinePlan.Mb(need.Gradients)}, " +
                $"optimizer {PipelinePlan.Mb(need.OptimizerState)}, activations {PipelinePlan.Mb(need.Activations)}), over this worker's budget of {PipelinePlan.Mb(budget)} MB (Worker:MemoryBudgetMb); " +
                "split the model into pipeline stages (parallelism.pipeline; `dtrain plan` shows the memory per stage)"));
    }

    /// <summary>Checks a pipeline assignment in managed code (nothing unchecked reaches torch), builds the stage and its links.</summary>
    private async Task<AssignReply> AssignStageAsync(AssignRequest request, PipelineAssignment p, JobSpec spec, ITokenizer tokenizer, LabelSet labels, TorchSharp.torch.Device device,
        RingConnection ring, TorchThread torch, int threads)
    {
        string? Bad()
        {
            if (p.Stages < 1 || p.Stage < 0 || p.Stage >= p.Stages) return $"stage {p.Stage} outside [0, {p.Stages})";
            if (p.LayerCount < 1 || p.FirstLayer < 0 || p.FirstLayer + p.LayerCount > spec.Model.Layers) return $"layers [{p.FirstLayer}, {p.FirstLayer + p.LayerCount}) outside the model's {spec.Model.Layers}";
            if (p.Microbatches < 1 || p.Microbatches > JobSpecValidator.MaxBatch) return $"microbatches {p.Microbatches} out of range";
            if (!PipelineSchedule.Kinds.Contains(p.Schedule)) return $"schedule \"{p.Schedule}\" is not one of {string.Join(", ", PipelineSchedule.Kinds)}";
            if (p.Replicas < 1 || p.Replica < 0 || p.Replica >= p.Replicas) return $"replica {p.Replica} outside [0, {p.Replicas})";
            if (p.Stage > 0 && !Uri.TryCreate(p.PreviousAddress, UriKind.Absolute, out _)) return $"stage {p.Stage} needs the previous stage's address, got \"{p.PreviousAddress}\"";
            if (p.Stage < p.Stages - 1 && !Uri.TryCreate(p.NextAddress, UriKind.Absolute, out _)) return $"stage {p.Stage} needs the next stage's address, got \"{p.NextAddress}\"";
            if (security?.Tls is not null && ((p.Stage > 0 && Neighbour(p.Previous) is null) || (p.Stage < p.Stages - 1 && Neighbour(p.Next) is null)))
                return $"stage {p.Stage}: with TLS the assignment must name the neighbouring stages' workers and certificates (pipeline.previous / pipeline.next)";
            return null;
        }
        if (Bad() is { } why)
        {
            await ring.DisposeAsync().ConfigureAwait(false);
            torch.Dispose();
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"job {request.JobId}: {why}"));
        }
        var plan = new StagePlan(p.Stage, p.FirstLayer, p.LayerCount, 0, HasEmbedding: p.Stage == 0, HasHead: p.Stage == p.Stages - 1);
        var stage = await torch.RunAsync(() => new PipelineStage(spec, tokenizer.VocabSize, spec.Task == TaskKinds.LanguageModel ? tokenizer.VocabSize : labels.Count, plan, device)).ConfigureAwait(false);
        var links = new GrpcStageLinks(request.JobId, request.Generation, p.Replica, p.Stage, p.Stage > 0 ? p.PreviousAddress : null, p.Stage < p.Stages - 1 ? p.NextAddress : null, mailboxes,
            security: security?.Tls is { } tls ? new StageLinkSecurity(tls, Neighbour(p.Previous), Neighbour(p.Next)) : null);
        var work = new StageWork(stage, links, PipelineSchedule.Create(p.Schedule, p.Stages, p.Microbatches), ring.Reducer);
        state.Current = new ReplicaJob(request, spec, tokenizer, labels, null, work, ring, torch);
        var parameters = stage.Parameters.Sum(x => x.numel());
        log.LogInformation("assigned job {JobId} generation {Generation}: pipeline stage {Stage}/{Stages} (layers {First}-{Last}) of replica {Replica}/{Replicas}, {Parameters} parameters, {Threads} thread(s); allocator: {Allocator}",
            request.JobId, request.Generation, p.Stage, p.Stages, p.FirstLayer, p.FirstLayer + p.LayerCount - 1, p.Replica, p.Replicas, parameters, threads, NativeAllocator.Describe());
        return new AssignReply { Parameters = parameters, ParameterChecksum = await torch.RunAsync(work.ParameterChecksum).ConfigureAwait(false) };
    }

    private static Rpc.ExpectedPeer? Neighbour(Peer? peer) => peer is null || peer.WorkerId.Length == 0 ? null : Rpc.ExpectedPeer.Worker(peer.WorkerId, peer.CertificateSha256);

    public override async Task<ShardReply> LoadShard(IAsyncStreamReader<ShardChunk> requestStream, ServerCallContext context)
    {
        ReplicaJob? job = null;
        await foreach (var chunk in requestStream.ReadAllAsync(context.CancellationToken).ConfigureAwait(false))
        {
            job = state.Require(chunk.JobId);
            try
            {
                job.Add(chunk);
            }
            catch (ArgumentException e)
            {
                throw new RpcException(new Status(StatusCode.InvalidArgument, $"job {chunk.JobId}: bad shard: {e.Message}"));
            }
        }
        return new ShardReply { StepsReceived = job?.StepsReceived ?? 0 };
    }

    public override async Task<RunStepReply> RunStep(RunStepRequest request, ServerCallContext context)
    {
        var job = state.Require(request.JobId);
        if (request.GlobalCount <= 0) throw new RpcException(new Status(StatusCode.InvalidArgument, $"global_count {request.GlobalCount} must be positive"));
        if (!(request.Lr > 0 && double.IsFinite(request.Lr))) throw new RpcException(new Status(StatusCode.InvalidArgument, $"lr {request.Lr} must be positive"));
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(job.Cancel.Token, context.CancellationToken);
        await job.EnterStepAsync(request.Step, linked.Token).ConfigureAwait(false);
        var completed = false;
        try
        {
            job.TryTake(request.Step, out var shardStep);
            var lm = job.Spec.Task == TaskKinds.LanguageModel;
            var carries = lm && job.Spec.Training.LmSampling == LmSamplingKinds.Stream;
            var rows = ReplicaJob.ToRows(shardStep, lm);
            if (shardStep is null && job.StepsReceived == 0 && request.Step == 0)
                throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {job.JobId}: no shard loaded"));
            if (job.Stage is { } work)
            {
                StageStepReport report;
                try
                {
                    report = await work.RunAsync(request.Step, rows, shardStep?.ResetState ?? false, carries, request.GlobalCount, job.Torch, linked.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (job.Cancel.IsCancellationRequested)
                {
                    throw new RpcException(new Status(StatusCode.Cancelled, $"job {job.JobId} was released during step {request.Step}"));
                }
                catch (Exception e) when (e is InvalidOperationException or InvalidDataException)
                {
                    throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {job.JobId}: {e.Message}"));
                }
                catch (IOException e)
                {
                    // A neighbouring stage went away: a consequence; the coordinator names the worker that failed.
                    throw new RpcException(new Status(StatusCode.Aborted, e.Message));
                }
                completed = true;
                state.Step = request.Step;
                return new RunStepReply
                {
                    LossSum = report.LossSum, Count = report.Count, Rows = report.Rows, SquaredGradNorm = report.SquaredNorm,
                    ComputeMs = report.ComputeMs, AllreduceMs = report.ReduceMs, IdleMs = report.IdleMs,
                };
            }
            ReplicaStepResult result;
            try
            {
                result = await job.Replica.StepAsync(rows, shardStep?.ResetState ?? false, carries, request.GlobalCount, request.Lr, request.Step, linked.Token, job.Torch).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (job.Cancel.IsCancellationRequested)
            {
                throw new RpcException(new Status(StatusCode.Cancelled, $"job {job.JobId} was released during step {request.Step}"));
            }
            completed = true;
            state.Step = request.Step;
            log.LogDebug("job {JobId} step {Step}: {Rows} rows, compute {Compute:F1} ms, all-reduce {Reduce:F1} ms", job.JobId, request.Step, result.Rows, result.ComputeMs, result.ReduceMs);
            return new RunStepReply
            {
                LossSum = result.LossSum,
                Count = result.Count,
                Rows = result.Rows,
                GradNorm = result.GradNorm,
                ParameterChecksum = request.ReportChecksum ? await job.Torch.RunAsync(job.Replica.ParameterChecksum).ConfigureAwait(false) : 0,
                ComputeMs = result.ComputeMs,
                AllreduceMs = result.ReduceMs,
            };
        }
        finally
        {
            job.ExitStep(request.Step, completed);
        }
    }

    public override async Task<EvaluateReply> Evaluate(EvaluateRequest request, ServerCallContext context)
    {
        var job = state.Require(request.JobId);
        if (request.BatchSize is < 1 or > JobSpecValidator.MaxBatch) throw new RpcException(new Status(StatusCode.InvalidArgument, $"batch_size {request.BatchSize} out of range"));
        await job.Gate.WaitAsync(context.CancellationToken).ConfigureAwait(false);
        try
        {
            var lm = job.Spec.Task == TaskKinds.LanguageModel;
            if (lm ? job.ValidationTokens.Count < 2 : job.ValidationSequences.Count == 0)
                throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {job.JobId}: this replica holds no validation data"));
            var m = await job.Torch.RunAsync(() => lm
                ? Evaluator.LanguageModel(job.Replica.Engine, [.. job.ValidationTokens], request.BatchSize, job.Spec.Training.SeqLen, request.MaxBatches)
                : Evaluator.Classification(job.Replica.Engine, job.ValidationSequences, job.ValidationLabels, job.Labels.Count, request.BatchSize, request.MaxBatches)).ConfigureAwait(false);
            var reply = new EvaluateReply { Loss = m.Loss, Count = m.Count };
            if (m.Accuracy is { } a) reply.Accuracy = a;
            if (m.MacroF1 is { } f) reply.MacroF1 = f;
            return reply;
        }
        finally
        {
            job.Gate.Release();
        }
    }

    public override async Task GetState(GetStateRequest request, IServerStreamWriter<StateChunk> responseStream, ServerCallContext context)
    {
        var job = state.Require(request.JobId);
        byte[] bytes;
        await job.Gate.WaitAsync(context.CancellationToken).ConfigureAwait(false);
        try
        {
            var training = new TrainingState { Step = request.Step, ElapsedSeconds = request.ElapsedSeconds, SamplesSeen = request.SamplesSeen };
            var data = await job.Torch.RunAsync(() => TrainingCheckpoint.Capture(job.Spec, job.Tokenizer, job.Labels, training, job.Replica.Engine)).ConfigureAwait(false);
            using var ms = new MemoryStream();
            CheckpointFormat.Write(ms, data);
            bytes = ms.ToArray();
        }
        finally
        {
            job.Gate.Release();
        }
        const int chunk = 1024 * 1024;
        for (var offset = 0; offset < bytes.Length || offset == 0; offset += chunk)
        {
            var n = Math.Min(chunk, bytes.Length - offset);
            await responseStream.WriteAsync(new StateChunk { TotalBytes = bytes.Length, Data = ByteString.CopyFrom(bytes, offset, n) }, context.CancellationToken).ConfigureAwait(false);
            if (n == 0) break;
        }
    }

    public override async Task<ApplyStepReply> ApplyStep(ApplyStepRequest request, ServerCallContext context)
    {
        var job = state.Require(request.JobId);
        var work = job.Stage ?? throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {job.JobId}: ApplyStep is for pipeline stages; this worker holds a whole replica"));
        if (request.GlobalCount <= 0) throw new RpcException(new Status(StatusCode.InvalidArgument, $"global_count {request.GlobalCount} must be positive"));
        if (!(request.Lr > 0 && double.IsFinite(request.Lr))) throw new RpcException(new Status(StatusCode.InvalidArgument, $"lr {request.Lr} must be positive"));
        if (!(request.GlobalNorm >= 0 && double.IsFinite(request.GlobalNorm))) throw new RpcException(new Status(StatusCode.InvalidArgument, $"global_norm {request.GlobalNorm} must be a finite number >= 0"));
        await job.Gate.WaitAsync(context.CancellationToken).ConfigureAwait(false);
        try
        {
            await job.Torch.RunAsync(() => work.Apply(request.Step, request.GlobalCount, request.Lr, request.GlobalNorm)).ConfigureAwait(false);
            return new ApplyStepReply { ParameterChecksum = request.ReportChecksum ? await job.Torch.RunAsync(work.ParameterChecksum).ConfigureAwait(false) : 0 };
        }
        catch (InvalidOperationException e)
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {job.JobId}: {e.Message}"));
        }
        finally
        {
            job.Gate.Release();
        }
    }

    public override async Task GetStageParameters(GetStateRequest request, IServerStreamWriter<NamedTensor> responseStream, ServerCallContext context)
    {
        var job = state.Require(request.JobId);
        var work = job.Stage ?? throw new RpcException(new Status(StatusCode.FailedPrecondition, $"job {job.JobId}: this worker holds a whole replica; use GetState"));
        List<NamedTensor> tensors;
        await job.Gate.WaitAsync(context.CancellationToken).ConfigureAwait(false);
        try
        {
            tensors = await job.Torch.RunAsync(() => work.Stage.NamedParameters().Zip(work.Stage.OptimizerStates()).Select(x =>
            {
                var (p, optimizerState) = x;
                var t = new NamedTensor
                {
                    Name = p.Name,
                    Data = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(p.Parameter.data<float>().ToArray().AsSpan())),
                    OptimizerState = ByteString.CopyFrom(optimizerState),
                };
                t.Shape.AddRange(p.Parameter.shape);
                return t;
            }).ToList()).ConfigureAwait(false);
        }
        finally
        {
            job.Gate.Release();
        }
        foreach (var t in tensors) await responseStream.WriteAsync(t, context.CancellationToken).ConfigureAwait(false);
    }

    public override async Task<ReleaseReply> Release(ReleaseRequest request, ServerCallContext context)
    {
        if (state.Current?.JobId == request.JobId) await state.ReleaseAsync(request.Reason).ConfigureAwait(false);
        return new ReleaseReply();
    }
}
