using Dtrain.Checkpoints;
using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Distributed.Pipeline;
using Dtrain.Rpc;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using Microsoft.Extensions.Logging;

namespace Dtrain.Worker;

/// <summary>
/// What a worker does for the coordinator — assign a job, load its shard, run steps, evaluate, hand over and take
/// state, change membership generation, release — without gRPC: requests in, replies out, and failures as the
/// exceptions the server interceptor maps to status codes (bad request → ArgumentException, wrong moment →
/// InvalidOperationException, unknown job → KeyNotFoundException, over budget → InsufficientMemoryException, a peer
/// gone → PeerFailureException, stopped on purpose → WorkStoppedException). It speaks the protocol's domain types
/// (<see cref="Dtrain.Cluster"/>); <see cref="WorkerControlService"/> adapts it to gRPC.
/// </summary>
public sealed class WorkerRuntime(WorkerSlot state, IRingConnector rings, IPeerState peers, WorkerOptions options, StageMailboxes mailboxes, ILogger<WorkerRuntime> log,
    WorkerSecurity? security = null, WorkerMetrics? metrics = null, IStageLinkConnector? stageLinks = null, EvaluationProbe? evaluationProbe = null)
{
    /// <summary>Worker:InjectNonFinite, the fault drill (null in normal operation).</summary>
    private readonly NonFiniteInjection? inject = options.NonFiniteInjection;

    public async Task<AssignResult> AssignAsync(Assignment request, CancellationToken cancel)
    {
        if (request.StartStep < 0 || (request.TotalSteps > 0 && request.StartStep >= request.TotalSteps))
            throw new ArgumentException($"start_step {request.StartStep} outside [0, {request.TotalSteps})");
        if (request.World < 1 || request.Rank < 0 || request.Rank >= request.World)
            throw new ArgumentException($"rank {request.Rank} outside world of {request.World}");
        if (request.Peers.Count != request.World)
            throw new ArgumentException($"{request.Peers.Count} peers for a world of {request.World}");
        JobSpec spec;
        try
        {
            spec = JobSpecSerializer.Parse(request.SpecJson, $"job {request.JobId}");
        }
        catch (SpecException e)
        {
            throw new ArgumentException(e.Message);
        }
        ITokenizer tokenizer;
        LabelSet labels;
        try
        {
            tokenizer = TokenizerFactory.FromState(request.Tokenizer);
            labels = new LabelSet(request.Labels);
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException(e.Message);
        }
        if (labels.Count < TrainingTasks.For(spec).MinimumLabels)
            throw new ArgumentException($"classification job with {labels.Count} labels");

        CheckMemoryBudget(request, spec, tokenizer.VocabSize, labels.Count);
        await state.ReleaseAsync("replaced by a new assignment").ConfigureAwait(false);
        var activity = state.Activity;
        activity.Job(request.JobId);
        activity.Enter(ActivityPhases.Loading, "assignment", request.StartStep + 1);
        // The worker's own --threads (its operator's decision, "auto" = its CPUs) is the most it runs; a spec's
        // training.threads may only ask for fewer.
        var threads = request.Threads > 0 ? Math.Min(request.Threads, options.ResolvedThreads) : options.ResolvedThreads;
        if (request.Threads > threads)
            log.LogInformation("job {JobId}: training.threads {Requested} capped at this worker's {Threads} (Worker:Threads)", request.JobId, request.Threads, threads);
        var device = DeviceSelector.Resolve(options.Device, m => log.LogWarning("{Message}", m));
        if (request.Stage is { } pipeline) CheckStage(request, pipeline, spec);
        RingConnection? ring = null;
        TorchThread? torch = null;
        DatasetRows? dataset = null;
        try
        {
            if (request.Dataset is { } named) dataset = await OpenDatasetAsync(request, named, spec, tokenizer, labels, cancel).ConfigureAwait(false);
            ring = await rings.ConnectAsync(Ring(request), cancel).ConfigureAwait(false);
            state.Observe(ring.Reducer, [.. request.Peers.OrderBy(p => p.Rank).Select(p => p.WorkerId)]);
            activity.Job(request.JobId, ring.Reducer.Transport);
            torch = new TorchThread($"torch-{request.JobId}", threads);
            var (job, reply) = request.Stage is { } p
                ? await AssignStageAsync(request, p, spec, tokenizer, labels, device, ring, torch, threads, cancel).ConfigureAwait(false)
                : await AssignReplicaAsync(request, spec, tokenizer, labels, device, ring, torch, threads).ConfigureAwait(false);
            if (dataset is not null) job.UseDataset(dataset);
            dataset = null;
            state.Current = job;
            ring = null;
            torch = null;
            activity.Enter(ActivityPhases.WaitingForData, "shard", request.StartStep + 1);
            return reply;
        }
        finally
        {
            // Anything that failed after the ring or the torch thread existed must not leak them.
            if (ring is not null) await ring.DisposeAsync().ConfigureAwait(false);
            torch?.Dispose();
            dataset?.Dispose();
        }
    }

    /// <summary>
    /// A dataset job's dataset, opened as the coordinator planned it: the same manifest (else "changed under the job"),
    /// the same vocabulary and labels. What fails is the job's problem (the dataset's URI and file named), never the worker's.
    /// </summary>
    private static async Task<DatasetRows> OpenDatasetAsync(Assignment request, AssignedDataset named, JobSpec spec, ITokenizer tokenizer, LabelSet labels, CancellationToken cancel)
    {
        Data.Datasets.StoredDataset opened;
        try
        {
            // What is read is checked against the manifest's SHA-256 in the background (format version 2: only the blocks
            // read): neither the first step nor this process's memory pays for it.
            opened = await Data.Datasets.StoredDataset.OpenAsync(named.Uri, named.ManifestSha256, cancel: cancel, verification: Data.Datasets.ShardVerification.Background).ConfigureAwait(false);
        }
        catch (Data.Datasets.DatasetException e)
        {
            throw new InvalidOperationException($"job {request.JobId}: {e.Message}", e);
        }
        try
        {
            if (!opened.Tokenizer.ToState().Tokens.SequenceEqual(tokenizer.ToState().Tokens) || !opened.Labels.Names.SequenceEqual(labels.Names))
                throw new InvalidOperationException($"job {request.JobId}: dataset {named.Uri} has another vocabulary or labels than the job's");
            return new DatasetRows(request.JobId, spec, opened, request.StepsPerEpoch, request.TotalSteps);
        }
        catch
        {
            opened.Dispose();
            throw;
        }
    }

    private async Task<(AssignedJob, AssignResult)> AssignReplicaAsync(Assignment request, JobSpec spec, ITokenizer tokenizer, LabelSet labels, TorchSharp.torch.Device device, RingConnection ring, TorchThread torch, int threads)
    {
        // parallelism.overlap "auto" needs a core beyond the torch threads of every worker of this job on this host.
        var spare = Environment.ProcessorCount - threads * Math.Max(1, SameHost(request));
        var replica = await torch.RunAsync(() => new DataParallelReplica(spec, tokenizer.VocabSize, labels.Count, device, ring.Reducer, spareCores: spare)).ConfigureAwait(false);
        replica.Activity = state.Activity;
        var job = new AssignedJob(request, spec, tokenizer, labels, new ReplicaWork(replica), ring, torch);
        log.LogInformation("assigned job {JobId} generation {Generation}: rank {Rank}/{World}, {Parameters} parameters, {Threads} thread(s), {Buckets} gradient bucket(s), overlap with backward {Overlap}; allocator: {Allocator}",
            request.JobId, request.Generation, request.Rank, request.World, replica.ParameterCount, threads, replica.Buckets.Count,
            replica.Overlap ? "on" : $"off ({spec.Parallelism?.Overlap ?? OverlapKinds.Auto}, {spare} spare core(s))", NativeAllocator.Describe());
        var checksum = await torch.RunAsync(replica.ParameterChecksum).ConfigureAwait(false);
        var names = await torch.RunAsync(() => replica.Engine.Model.named_parameters().Select(p => p.name).ToList()).ConfigureAwait(false);
        return (job, new AssignResult(replica.ParameterCount, checksum, names));
    }

    /// <summary>Workers of the assignment on this worker's host (its own address's host; 1 when unknown).</summary>
    private static int SameHost(Assignment request)
    {
        var self = request.Peers.FirstOrDefault(p => p.Rank == request.Rank);
        if (self is null || !Uri.TryCreate(self.Address, UriKind.Absolute, out var own)) return 1;
        return request.Peers.Count(p => Uri.TryCreate(p.Address, UriKind.Absolute, out var u) && string.Equals(u.Host, own.Host, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>
    /// Refuses an assignment whose estimated memory (the whole model, or this stage) exceeds Worker:MemoryBudgetMb — by
    /// default the memory available now — naming the fields and the estimate.
    /// </summary>
    private void CheckMemoryBudget(Assignment request, JobSpec spec, int vocabSize, int classes)
    {
        var limit = options.MemoryBudgetMb switch
        {
            null => MemoryBudget.Available(),
            0 => MemoryBudget.None,
            { } mb => MemoryBudget.FromMegabytes(mb, "Worker:MemoryBudgetMb"),
        };
        if (limit.Bytes <= 0) return;
        var outputs = TrainingTasks.For(spec).Outputs(vocabSize, classes);
        var layout = ModelLayout.Of(spec.Model, vocabSize, outputs);
        StageMemory need;
        string what;
        if (request.Stage is { } p && p.Stages > 0 && p.FirstLayer >= 0 && p.LayerCount >= 1 && p.FirstLayer + p.LayerCount <= layout.Layers.Count)
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
            need = PipelinePlan.Estimate(spec, whole, Math.Max(1, spec.Training.BatchSize / Math.Max(1, request.World)), 1, outputs);
            what = "the whole model";
        }
        if (need.Total > limit.Bytes)
            throw new InsufficientMemoryException(
                $"job {request.JobId}: {what} needs about {PipelinePlan.Mb(need.Total)} MB (weights {PipelinePlan.Mb(need.Weights)}, gradients {PipelinePlan.Mb(need.Gradients)}, " +
                $"optimizer {PipelinePlan.Mb(need.OptimizerState)}, activations {PipelinePlan.Mb(need.Activations)}) for {TrainingMemory.Fields(spec, vocabSize, outputs, known: true)} and training.batch_size {spec.Training.BatchSize}, " +
                $"over this worker's budget of {limit.Describe()} (Worker:MemoryBudgetMb, `dtrain worker --memory-budget MB`; 0 = no check); " +
                "make the model or the batch smaller, or split the model into pipeline stages (parallelism.pipeline; `dtrain plan` shows the memory per stage)");
    }

    /// <summary>Checks a pipeline assignment in managed code: nothing unchecked reaches torch.</summary>
    private void CheckStage(Assignment request, PipelineStageAssignment p, JobSpec spec)
    {
        string? Bad()
        {
            if (p.Stages < 1 || p.Stage < 0 || p.Stage >= p.Stages) return $"stage {p.Stage} outside [0, {p.Stages})";
            if (p.LayerCount < 1 || p.FirstLayer < 0 || p.FirstLayer + p.LayerCount > spec.Model.Layers) return $"layers [{p.FirstLayer}, {p.FirstLayer + p.LayerCount}) outside the model's {spec.Model.Layers}";
            if (p.Microbatches < 1 || p.Microbatches > JobSpecValidator.MaxBatch) return $"microbatches {p.Microbatches} out of range";
            if (!PipelineSchedule.Kinds.Contains(p.Schedule)) return $"schedule \"{p.Schedule}\" is not one of {string.Join(", ", PipelineSchedule.Kinds)}";
            if (p.Replicas < 1 || p.Replica < 0 || p.Replica >= p.Replicas) return $"replica {p.Replica} outside [0, {p.Replicas})";
            if (p.Stage > 0 && !Uri.TryCreate(p.Previous?.Address ?? "", UriKind.Absolute, out _)) return $"stage {p.Stage} needs the previous stage's address, got \"{p.Previous?.Address}\"";
            if (p.Stage < p.Stages - 1 && !Uri.TryCreate(p.Next?.Address ?? "", UriKind.Absolute, out _)) return $"stage {p.Stage} needs the next stage's address, got \"{p.Next?.Address}\"";
            if (security?.Tls is not null && ((p.Stage > 0 && Neighbour(p.Previous) is null) || (p.Stage < p.Stages - 1 && Neighbour(p.Next) is null)))
                return $"stage {p.Stage}: with TLS the assignment must name the neighbouring stages' workers and certificates (pipeline.previous / pipeline.next)";
            return null;
        }
        if (Bad() is { } why) throw new ArgumentException($"job {request.JobId}: {why}");
    }

    /// <summary>Builds a checked pipeline assignment's stage and its links.</summary>
    private async Task<(AssignedJob, AssignResult)> AssignStageAsync(Assignment request, PipelineStageAssignment p, JobSpec spec, ITokenizer tokenizer, LabelSet labels, TorchSharp.torch.Device device,
        RingConnection ring, TorchThread torch, int threads, CancellationToken cancel)
    {
        var plan = new StagePlan(p.Stage, p.FirstLayer, p.LayerCount, 0, HasEmbedding: p.Stage == 0, HasHead: p.Stage == p.Stages - 1);
        var stage = await torch.RunAsync(() => new PipelineStage(spec, tokenizer.VocabSize, TrainingTasks.For(spec).Outputs(tokenizer.VocabSize, labels.Count), plan, device)).ConfigureAwait(false);
        // Over the worker's data transport (shm / tcp / grpc, as its ring); without a connector (in-memory tests) the gRPC StageLink streams.
        IStageLinkSet links;
        try
        {
            links = stageLinks is not null
                ? await stageLinks.ConnectAsync(request, p, cancel).ConfigureAwait(false)
                : new GrpcStageLinks(request.JobId, request.Generation, p.Replica, p.Stage, p.Stage > 0 ? p.Previous?.Address ?? "" : null, p.Stage < p.Stages - 1 ? p.Next?.Address ?? "" : null, mailboxes,
                    security: security?.Tls is { } tls ? new StageLinkSecurity(tls, Neighbour(p.Previous), Neighbour(p.Next)) : null);
        }
        catch
        {
            stage.Dispose();
            throw;
        }
        try
        {
            var work = new StageWork(request.JobId, stage, links, PipelineSchedule.Create(p.Schedule, p.Stages, p.Microbatches), ring.Reducer)
            {
                Activity = state.Activity,
                Neighbours = (p.Previous?.WorkerId ?? "", p.Next?.WorkerId ?? ""),
            };
            state.Activity.Job(request.JobId, work.Transport);
            var job = new AssignedJob(request, spec, tokenizer, labels, work, ring, torch);
            var parameters = stage.Parameters.Sum(x => x.numel());
            log.LogInformation("assigned job {JobId} generation {Generation}: pipeline stage {Stage}/{Stages} (layers {First}-{Last}) of replica {Replica}/{Replicas}, {Parameters} parameters, {Threads} thread(s); allocator: {Allocator}",
                request.JobId, request.Generation, p.Stage, p.Stages, p.FirstLayer, p.FirstLayer + p.LayerCount - 1, p.Replica, p.Replicas, parameters, threads, NativeAllocator.Describe());
            var checksum = await torch.RunAsync(work.ParameterChecksum).ConfigureAwait(false);
            var names = await torch.RunAsync(() => stage.NamedParameters().Select(p => p.Name).ToList()).ConfigureAwait(false);
            return (job, new AssignResult(parameters, checksum, names));
        }
        catch
        {
            // The stage links hold registered channels and open links: release them with the stage.
            await links.DisposeAsync().ConfigureAwait(false);
            stage.Dispose();
            throw;
        }
    }

    private static ExpectedPeer? Neighbour(ClusterPeer? peer) => peer is null || peer.WorkerId.Length == 0 ? null : ExpectedPeer.Worker(peer.WorkerId, peer.CertificateSha256);

    /// <summary>The ring an assignment joins: its rank among the peers of its generation.</summary>
    private static RingMembership Ring(Assignment a) => new(a.JobId, a.Generation, a.Rank, a.World, a.Peers, a.StartStep);

    /// <summary>Takes job <paramref name="jobId"/>'s rows (and validation split) in slices; returns how many steps it holds.</summary>
    public async Task<int> LoadShardAsync(string jobId, IAsyncEnumerable<ShardSlice> slices, CancellationToken cancel)
    {
        AssignedJob? job = null;
        await foreach (var slice in slices.WithCancellation(cancel).ConfigureAwait(false))
        {
            job = state.Require(jobId);
            state.Activity.Enter(ActivityPhases.Loading, "shard");
            try
            {
                job.Add(slice);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"job {jobId}: bad shard: {e.Message}");
            }
        }
        if (job is not null) state.Activity.Enter(ActivityPhases.WaitingForData, $"step {job.LastStep + 2}");
        return job?.StepsReceived ?? 0;
    }

    public async Task<StepResult> RunStepAsync(StepCommand request, CancellationToken cancel)
    {
        var job = state.Require(request.JobId);
        // The generation's abandon token is taken before its generation is checked: a re-forming landing in between
        // (abort, then a new generation with a new token) then either fails the check or has cancelled this token —
        // never lets a step of the old generation run in the new one.
        var abandoned = job.StepsCancelled;
        if (request.Generation != 0 && request.Generation != job.Generation)
            throw new StaleGenerationException($"job {job.JobId}: step {request.Step} of generation {request.Generation}, but this worker is at generation {job.Generation}");
        if (request.GlobalCount <= 0) throw new ArgumentException($"global_count {request.GlobalCount} must be positive");
        if (!(request.Lr > 0 && double.IsFinite(request.Lr))) throw new ArgumentException($"lr {request.Lr} must be positive");
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(job.Cancel.Token, abandoned, cancel);
        await job.EnterStepAsync(request.Step, linked.Token).ConfigureAwait(false);
        var completed = false;
        state.Activity.Enter(ActivityPhases.Forward, newStep: request.Step + 1);
        try
        {
            // A step out of turn is refused before its rows are taken, so that its retry has them.
            job.Work.CheckTurn(request.Step);
            ShardRows? shardStep;
            var awaiting = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                shardStep = await job.TakeAsync(request.Step, linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (job.Cancel.IsCancellationRequested || abandoned.IsCancellationRequested)
            {
                // Stopped while awaiting its dataset rows: as a step stopped while it computes.
                throw Stopped(job, request.Step, abandoned);
            }
            var dataWait = System.Diagnostics.Stopwatch.GetElapsedTime(awaiting);
            var carries = job.TrainingTask.CarriesState(job.Spec);
            var rows = AssignedJob.ToRows(shardStep, lengths: job.TrainingTask.HasLabels);
            if (shardStep is null && job.StepsReceived == 0 && request.Step == job.StartStep)
                throw new InvalidOperationException($"job {job.JobId}: no shard loaded");
            WorkStepReport report;
            try
            {
                var step = new WorkStep(request.Step, rows, shardStep?.ResetState ?? false, carries, request.GlobalCount, request.Lr, request.ReportChecksum, Injected(job, request.Step));
                report = await job.Work.StepAsync(step, job.Torch, linked.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (job.Cancel.IsCancellationRequested || abandoned.IsCancellationRequested)
            {
                throw Stopped(job, request.Step, abandoned);
            }
            completed = true;
            state.Step = request.Step;
            // A dataset job's rows: how long this step waited for them (read ahead while the step before ran, usually none).
            var result = job.Dataset is null ? report.Result : report.Result with { DataWaitMs = dataWait.TotalMilliseconds };
            metrics?.Step(job.JobId, result.ComputeMs, result.AllreduceMs, report.SummedValues, job.WorldSize, report.Transport);
            if (job.Dataset is not null) metrics?.DataWait(job.JobId, dataWait);
            log.LogDebug("job {JobId} step {Step}: {Rows} rows, compute {Compute:F1} ms, all-reduce {Reduce:F1} ms", job.JobId, request.Step, result.Rows, result.ComputeMs, result.AllreduceMs);
            if (result.Skipped)
                log.LogWarning("job {JobId} step {Step}: skipped, the {What} summed over the replicas is not finite (local loss sum {Loss})", job.JobId, request.Step + 1, result.NonFinite, result.LossSum);
            return result;
        }
        finally
        {
            state.Activity.EnterFor(job.JobId, ActivityPhases.WaitingForData, $"step {request.Step + 2} from the coordinator");
            job.ExitStep(request.Step, completed);
        }
    }

    /// <summary>Enters <paramref name="phase"/> until disposed, then "waiting for data" (the next step).</summary>
    private PhaseScope Phase(string phase, string detail = "")
    {
        state.Activity.Enter(phase, detail);
        return new PhaseScope(state.Activity);
    }

    private readonly struct PhaseScope(WorkerActivity activity) : IDisposable
    {
        public void Dispose() => activity.Enter(ActivityPhases.WaitingForData, "next step from the coordinator");
    }

    /// <summary>The fault drill's cause at this step (0-based index), logged when it fires.</summary>
    private string? Injected(AssignedJob job, long step)
    {
        var cause = inject?.At(step);
        if (cause is not null) log.LogWarning("job {JobId} step {Step}: injecting a non-finite {What} (Worker:InjectNonFinite)", job.JobId, step + 1, cause);
        return cause;
    }

    private static WorkStoppedException Stopped(AssignedJob job, long step, CancellationToken abandoned) =>
        new(abandoned.IsCancellationRequested
            ? $"job {job.JobId}: step {step} abandoned for a new membership generation"
            : $"job {job.JobId} was released during step {step}");

    /// <summary>
    /// Evaluates the job's model on the validation split this worker holds, telling <paramref name="progress"/> the
    /// batches done after each one (on the torch thread); a cancelled call stops at the next batch.
    /// </summary>
    public async Task<EvalSums> EvaluateAsync(EvalCommand request, CancellationToken cancel, Action<long>? progress = null)
    {
        var job = state.Require(request.JobId);
        if (request.BatchSize is < 1 or > JobSpecValidator.MaxBatch) throw new ArgumentException($"batch_size {request.BatchSize} out of range");
        if (request.Parts < 1 || request.Part < 0 || request.Part >= request.Parts) throw new ArgumentException($"evaluation part {request.Part} of {request.Parts} is not a part");
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        using var phase = Phase(ActivityPhases.Evaluation);
        try
        {
            // A classifier's validation split may be empty (its records' labels were moved back to training): that
            // evaluates to "no validation data", as in one process, instead of failing the job.
            if (!job.TrainingTask.HasLabels && job.ValidationLength < 2 && !job.ValidationFromDataset)
                throw new InvalidOperationException($"job {job.JobId}: this replica holds no validation data");
            // A dataset job's validation split is read from the dataset by this worker: what its manifest says is checked
            // first, its ids, records and labels as evaluation reads them (only the batches evaluated are read).
            if (job.ValidationFromDataset && job.Dataset is { } checkedDataset) await Task.Run(checkedDataset.CheckValidation, cancel).ConfigureAwait(false);
            var validation = job.ValidationFromDataset && job.Dataset is { } dataset ? dataset.Validation : job.SentValidation();
            EvalSums m;
            try
            {
                void Batches(long done)
                {
                    cancel.ThrowIfCancellationRequested();
                    evaluationProbe?.AfterBatch?.Invoke(done, cancel);
                    progress?.Invoke(done);
                }
                m = await job.Torch.RunAsync(() => job.Work.Evaluate(job.TrainingTask, validation, request.BatchSize, request.MaxBatches, new EvalPart(request.Part, request.Parts), Batches)).ConfigureAwait(false);
            }
            catch (Data.Datasets.DatasetException e)
            {
                throw new InvalidOperationException($"job {job.JobId}: evaluation: {e.Message}", e);
            }
            // What was read so far (the validation split's included) is checked before the figures count.
            if (job.ValidationFromDataset && job.Dataset is { } read) await read.VerifiedAsync("evaluation", cancel).ConfigureAwait(false);
            // What the protocol reports: the part's sums, which the coordinator combines with the other ranks'.
            return m;
        }
        finally
        {
            job.Gate.Release();
        }
    }

    /// <summary>
    /// The replica's full training state in the checkpoint format, taken at step <paramref name="request"/>.Step, which
    /// must be where it stands. <paramref name="peerWorker"/>: the worker asking (a peer of an elastic job taking this
    /// state), which must be a member of the job's current generation; null for the coordinator.
    /// </summary>
    public async Task<byte[]> GetStateAsync(StateSnapshot request, CancellationToken cancel, string? peerWorker = null)
    {
        var job = state.Require(request.JobId);
        if (peerWorker is not null && !job.PeerIds.Contains(peerWorker))
            throw new UnauthorizedAccessException($"worker {peerWorker} is not a member of job {job.JobId} (generation {job.Generation}): it may not take its state");
        byte[] bytes;
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        using var phase = Phase(ActivityPhases.CheckpointTransfer, "state to the coordinator or a peer");
        try
        {
            if (request.Step != job.LastStep + 1)
                throw new InvalidOperationException($"job {job.JobId}: state at step {request.Step} asked, but this replica stands at step {job.LastStep + 1}");
            var training = new TrainingState { Step = request.Step, ElapsedSeconds = request.ElapsedSeconds, SamplesSeen = request.SamplesSeen, NonFiniteStreak = request.NonFiniteStreak };
            var data = await job.Torch.RunAsync(() => job.Work.CaptureState(job.Spec, job.Tokenizer, job.Labels, training)).ConfigureAwait(false);
            using var ms = new MemoryStream();
            CheckpointFormat.Write(ms, data);
            bytes = ms.ToArray();
        }
        finally
        {
            job.Gate.Release();
        }
        return bytes;
    }

    public async Task<ApplyResult> ApplyStepAsync(ApplyCommand request, CancellationToken cancel)
    {
        var job = state.Require(request.JobId);
        var work = job.Require<StageWork>("ApplyStep is for pipeline stages; this worker holds a whole replica");
        if (request.GlobalCount <= 0) throw new ArgumentException($"global_count {request.GlobalCount} must be positive");
        if (!(request.Lr > 0 && double.IsFinite(request.Lr))) throw new ArgumentException($"lr {request.Lr} must be positive");
        if (!request.Skip && !(request.GlobalNorm >= 0 && double.IsFinite(request.GlobalNorm))) throw new ArgumentException($"global_norm {request.GlobalNorm} must be a finite number >= 0");
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        using var phase = Phase(ActivityPhases.Optimizer);
        try
        {
            var applied = await work.ApplyAsync(request, inject?.At(request.Step) == NonFiniteInjection.Parameters, job.Torch).ConfigureAwait(false);
            if (request.Skip) log.LogWarning("job {JobId} step {Step}: skipped (the coordinator found a non-finite loss or gradient norm)", job.JobId, request.Step + 1);
            return applied;
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidOperationException($"job {job.JobId}: {e.Message}");
        }
        finally
        {
            job.Gate.Release();
        }
    }

    public async Task<List<ParameterTensor>> GetStageParametersAsync(StateSnapshot request, CancellationToken cancel)
    {
        var job = state.Require(request.JobId);
        var work = job.Require<StageWork>("this worker holds a whole replica; use GetState");
        List<ParameterTensor> tensors;
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        using var phase = Phase(ActivityPhases.CheckpointTransfer, "stage parameters to the coordinator");
        try
        {
            tensors = await job.Torch.RunAsync(() => ParameterTransfer.Capture(work.Stage.NamedParameters(), (TorchSharp.Modules.OptimizerHelper)work.Stage.Optimizer)).ConfigureAwait(false);
        }
        finally
        {
            job.Gate.Release();
        }
        return tensors;
    }

    /// <summary>Resumed jobs: job <paramref name="jobId"/>'s parameters and optimizer state, after Assign and before its first step.</summary>
    public async Task<LoadStateResult> LoadStateAsync(string jobId, IAsyncEnumerable<ParameterTensor?> parameters, CancellationToken cancel)
    {
        AssignedJob? job = null;
        var tensors = new Dictionary<string, ParameterTensor>(StringComparer.Ordinal);
        await foreach (var tensor in parameters.WithCancellation(cancel).ConfigureAwait(false))
        {
            job ??= state.Require(jobId);
            if (tensor is null || !tensors.TryAdd(tensor.Name, tensor))
                throw new ArgumentException($"job {job.JobId}: state without a tensor, or parameter \"{tensor?.Name}\" sent twice");
        }
        if (job is null) throw new ArgumentException("empty state");
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        using var phase = Phase(ActivityPhases.CheckpointTransfer, "loading state");
        try
        {
            if (job.LastStep >= job.StartStep) throw new InvalidOperationException($"job {job.JobId}: state loaded after step {job.LastStep} ran");
            var checksum = await job.Torch.RunAsync(() =>
            {
                job.Work.LoadParameters(tensors);
                return job.Work.ParameterChecksum();
            }).ConfigureAwait(false);
            log.LogInformation("job {JobId}: loaded {Count} parameter(s) and their optimizer state; continuing at step {Step}", job.JobId, tensors.Count, job.StartStep);
            return new LoadStateResult(checksum, tensors.Count);
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException($"job {job.JobId}: state does not fit: {e.Message}");
        }
        finally
        {
            job.Gate.Release();
        }
    }

    /// <summary>Elastic jobs: abandons the step in flight (and any queued one), closes the ring, and says where this replica stands.</summary>
    public async Task<StepStanding> AbortAsync(string jobId, long generation, string reason)
    {
        var job = state.Require(jobId);
        var work = job.Require<ReplicaWork>("a pipeline stage cannot change membership; the job restarts from its checkpoint instead");
        await job.AbortAsync(generation, TimeSpan.FromSeconds(options.CollectiveTimeoutSeconds)).ConfigureAwait(false);
        try
        {
            var checksum = await job.Torch.RunAsync(work.ParameterChecksum).ConfigureAwait(false);
            log.LogInformation("job {JobId}: steps of generation {Old} abandoned for generation {New} ({Reason}); standing at step {Step}", job.JobId, job.Generation, generation, reason, job.LastStep + 1);
            return new StepStanding(job.LastStep + 1, checksum);
        }
        finally
        {
            job.EndAbort();
        }
    }

    /// <summary>Elastic jobs: joins the ring of a new generation as a new rank, standing at <see cref="RingMembership.NextStep"/>.</summary>
    public async Task ReconfigureAsync(RingMembership request, CancellationToken cancel)
    {
        var job = state.Require(request.JobId);
        job.Require<ReplicaWork>("a pipeline stage cannot change membership");
        if (request.Generation <= job.Generation)
            throw new StaleGenerationException($"job {job.JobId}: reconfigure to generation {request.Generation}, but this worker is already at generation {job.Generation}");
        if (request.World < 1 || request.Rank < 0 || request.Rank >= request.World || request.Peers.Count != request.World)
            throw new ArgumentException($"rank {request.Rank} of a world of {request.World} with {request.Peers.Count} peers");
        if (request.NextStep < 0) throw new ArgumentException($"next_step {request.NextStep} must be >= 0");
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var ring = await rings.ConnectAsync(request, cancel).ConfigureAwait(false);
            state.Observe(ring.Reducer, [.. request.Peers.OrderBy(p => p.Rank).Select(p => p.WorkerId)]);
            await job.ReconfigureAsync(request.Generation, request.Rank, request.World, ring, request.NextStep, [.. request.Peers.OrderBy(p => p.Rank).Select(p => p.WorkerId)]).ConfigureAwait(false);
            log.LogInformation("job {JobId}: generation {Generation}: rank {Rank}/{World} from step {Step}", job.JobId, request.Generation, request.Rank, request.World, request.NextStep);
        }
        finally
        {
            job.Gate.Release();
        }
    }

    /// <summary>Elastic jobs: replaces this replica's parameters, optimizer and RNG state with a peer's (worker to worker), at a committed step.</summary>
    public async Task<SyncResult> SyncStateAsync(SyncSource request, CancellationToken cancel)
    {
        var job = state.Require(request.JobId);
        var work = job.Require<ReplicaWork>("a pipeline stage cannot take a peer's state");
        if (request.Generation != job.Generation)
            throw new StaleGenerationException($"job {job.JobId}: state sync of generation {request.Generation}, but this worker is at generation {job.Generation}");
        if (!Uri.TryCreate(request.Source.Address, UriKind.Absolute, out _)) throw new ArgumentException($"source_address \"{request.Source.Address}\" is not a URL");
        byte[] bytes;
        using var phase = Phase(ActivityPhases.CheckpointTransfer, $"state from {request.Source.WorkerId}");
        try
        {
            bytes = await peers.FetchStateAsync(request.Source.Address, request.Source.WorkerId, request.Source.CertificateSha256, job.JobId, request.NextStep, cancel).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new PeerFailureException($"job {job.JobId}: could not take the state of step {request.NextStep} from {request.Source.Address}: {e.Message}", e);
        }
        await job.Gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var data = CheckpointFormat.Read(new MemoryStream(bytes), $"state of job {job.JobId} from {request.Source.Address}");
            var checksum = await job.Torch.RunAsync(() => work.TakeState(data, request.Source.Address)).ConfigureAwait(false);
            job.StandAt(request.NextStep);
            log.LogInformation("job {JobId}: took the state of step {Step} ({Bytes} bytes) from {Source}", job.JobId, request.NextStep, bytes.Length, request.Source.Address);
            return new SyncResult(checksum, bytes.Length);
        }
        finally
        {
            job.Gate.Release();
        }
    }

    public async Task ReleaseAsync(string jobId, string reason)
    {
        if (state.Current?.JobId == jobId) await state.ReleaseAsync(reason).ConfigureAwait(false);
    }
}
