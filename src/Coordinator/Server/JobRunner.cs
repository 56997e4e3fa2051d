using System.Diagnostics;
using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Dtrain.Specs;
using Dtrain.Training;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// Runs one job on its reserved workers: prepares and shards the data, assigns ranks, streams every rank its
/// rows epoch by epoch, drives the steps, checks that replicas agree, evaluates and checkpoints from rank 0, and
/// fails the job — naming the worker and the step — when a worker errs, hangs or is lost.
/// </summary>
public sealed class JobRunner(CoordinatorOptions options, WorkerRegistry registry, WorkerClients clients, TimeProvider clock, ILogger<JobRunner> log)
{
    /// <summary>Why a job stopped early: the message shown to the user, and the worker that could not be reached, if any.</summary>
    private sealed class JobFailure(string message, WorkerRecord? unreachable = null, bool peerFailure = false) : Exception(message)
    {
        public WorkerRecord? Unreachable { get; } = unreachable;
        /// <summary>The worker reported that a ring peer failed: a consequence, not the cause.</summary>
        public bool PeerFailure { get; } = peerFailure;
    }

    public async Task RunAsync(JobRecord job, IReadOnlyList<WorkerRecord> workers, CancellationToken stop)
    {
        using var failure = CancellationTokenSource.CreateLinkedTokenSource(job.Cancel.Token, stop);
        string? lostMessage = null;
        void Depart(WorkerRecord w, string message)
        {
            if (w.JobId != job.Id) return;
            lock (failure)
            {
                lostMessage ??= message;
            }
            failure.Cancel();
        }
        void OnLost(WorkerRecord w) => Depart(w, $"worker {w.Id} ({w.Address}) lost: no heartbeat for {options.WorkerTimeoutSeconds:F0}s at step {job.Snapshot().Step}");
        // Continuing without it (elastic resize) is future work: the job fails at the step boundary the worker drained at.
        void OnLeft(WorkerRecord w, string reason) => Depart(w, $"worker {w.Id} ({w.Address}) left after step {job.Snapshot().Step}: {reason}");
        registry.WorkerLost += OnLost;
        registry.WorkerLeft += OnLeft;
        job.Update(i =>
        {
            i.State = JobState.Preparing;
            i.Message = "preparing data";
            i.StartedUnixMs = clock.GetUtcNow().ToUnixTimeMilliseconds();
            i.WorkerIds.Clear();
            i.WorkerIds.AddRange(workers.Select(w => w.Id));
        });
        try
        {
            await RunCoreAsync(job, workers, failure.Token).ConfigureAwait(false);
            job.Update(i => { i.State = JobState.Succeeded; i.Message = ""; i.FinishedUnixMs = clock.GetUtcNow().ToUnixTimeMilliseconds(); });
            log.LogInformation("job {Id} succeeded", job.Id);
        }
        catch (Exception e) when (job.Cancel.IsCancellationRequested && lostMessage is null)
        {
            Finish(job, JobState.Cancelled, "cancelled by user" + (e is OperationCanceledException or RpcException ? "" : $" ({e.Message})"));
        }
        catch (Exception e) when (lostMessage is not null)
        {
            Finish(job, JobState.Failed, lostMessage);
            log.LogDebug(e, "job {Id} interrupted by a lost worker", job.Id);
        }
        catch (JobFailure e) when (e.Unreachable is { } w)
        {
            // A worker that cannot be reached must not be handed the next job; if it is alive after all, its
            // next heartbeat is answered "unknown" and it registers again.
            registry.MarkLost(w.Id, e.Message);
            Finish(job, JobState.Failed, e.Message);
        }
        catch (Exception e) when (e is JobFailure or DataFormatException or SpecException or ArgumentException or InvalidDataException or CorruptCheckpointException)
        {
            Finish(job, JobState.Failed, e.Message);
        }
        catch (Exception e)
        {
            log.LogError(e, "job {Id} failed", job.Id);
            Finish(job, JobState.Failed, $"{e.GetType().Name}: {e.Message}");
        }
        finally
        {
            registry.WorkerLost -= OnLost;
            registry.WorkerLeft -= OnLeft;
            await ReleaseAsync(job, workers).ConfigureAwait(false);
            registry.Release(job.Id);
        }
    }

    private void Finish(JobRecord job, JobState state, string message)
    {
        log.LogWarning("job {Id} {State}: {Message}", job.Id, state, message);
        job.Update(i => { i.State = state; i.Message = message; i.FinishedUnixMs = clock.GetUtcNow().ToUnixTimeMilliseconds(); });
    }

    private async Task RunCoreAsync(JobRecord job, IReadOnlyList<WorkerRecord> workers, CancellationToken cancel)
    {
        var spec = job.Spec;
        var world = workers.Count;
        var data = await Task.Run(() => PreparedData.Load(spec, job.Dir), cancel).ConfigureAwait(false);
        if (data.Report.Skipped > 0 || data.Report.Truncated > 0)
            job.Publish(new JobEvent { Log = $"data: read {data.Report.Read} records, skipped {data.Report.Skipped}, truncated {data.Report.Truncated}" });
        var isLm = spec.Task == TaskKinds.LanguageModel;
        IBatchSource source = isLm
            ? new LanguageModelBatches(data.TrainTokens, spec.Training.BatchSize, spec.Training.SeqLen, spec.Training.LmSampling, spec.Training.Seed)
            : new ClassificationBatches(data.TrainSequences, data.TrainLabels, spec.Training.BatchSize, spec.Training.Seed);
        if (spec.Training.BatchSize < world)
            throw new JobFailure($"training.batch_size {spec.Training.BatchSize} is smaller than the {world} workers: every worker needs at least one row");
        var total = spec.Training.MaxSteps > 0 ? spec.Training.MaxSteps : spec.Training.Epochs * source.StepsPerEpoch;
        var plan = new ShardPlan(source, world, total);
        var schedule = new LearningRateSchedule(spec.Schedule, spec.Optimizer.Lr, total);
        var store = new CheckpointStore(Path.Combine(job.Dir, "checkpoints"), spec.Training.KeepCheckpoints);

        // Assign ranks: every replica builds the same model from the same seed; the checksums prove it.
        var specJson = JobSpecSerializer.Serialize(spec);
        var tokenizer = data.Tokenizer.ToState();
        var peers = workers.Select((w, r) => new Peer { Rank = r, WorkerId = w.Id, Address = w.Address }).ToList();
        var assigned = await OnAllAsync(workers, "assign", 0, options.CallTimeoutSeconds, cancel, (w, rank, deadline, ct) =>
        {
            var request = new AssignRequest
            {
                JobId = job.Id, Generation = 1, SpecJson = specJson, Rank = rank, WorldSize = world,
                TokenizerKind = tokenizer.Kind, TokenizerLowercase = tokenizer.Lowercase,
                TotalSteps = total, StepsPerEpoch = source.StepsPerEpoch, Threads = spec.Training.Threads,
            };
            request.Peers.AddRange(peers);
            request.TokenizerTokens.AddRange(tokenizer.Tokens);
            request.Labels.AddRange(data.Labels.Names);
            return clients.For(w.Address).AssignAsync(request, deadline: deadline, cancellationToken: ct).ResponseAsync;
        }).ConfigureAwait(false);
        CheckChecksums(workers, assigned.Select(a => a.ParameterChecksum).ToArray(), "after initialisation");
        job.Update(i => { i.Parameters = assigned[0].Parameters; i.TotalSteps = total; i.State = JobState.Running; i.Message = ""; });
        job.Publish(new JobEvent { Log = $"{world} worker(s): {string.Join(", ", workers.Select((w, r) => $"rank {r} = {w.Id} {w.Address}"))}; {assigned[0].Parameters:N0} parameters, {total} steps" });

        var globalCounts = new Dictionary<long, long>();
        var clock = Stopwatch.StartNew();
        long samples = 0;
        long loadedUntil = 0;
        var sendValidation = true;
        double lastDone = 0;
        using var pipeline = CancellationTokenSource.CreateLinkedTokenSource(cancel);

        // Step k+1 is sent while step k runs (a window of two): workers queue it and start the moment step k ends,
        // so neither the round trip nor the coordinator's bookkeeping sits between two steps. Steps after which the
        // coordinator evaluates or checkpoints are not overlapped: those need the replicas to stand still.
        async Task<InFlight> LaunchAsync(long step, bool behindAnother)
        {
            if (step == loadedUntil)
            {
                // Stream each rank its rows of the whole next epoch (and rank 0 the validation split, once).
                var epochEnd = Math.Min(total, (plan.PositionOf(step).Epoch + 1) * plan.StepsPerEpoch);
                await SendShardsAsync(job, workers, plan, step, epochEnd, globalCounts, sendValidation ? data : null, pipeline.Token).ConfigureAwait(false);
                sendValidation = false;
                loadedUntil = epochEnd;
            }
            var lr = schedule.At(step);
            var checksum = (step + 1) % options.ChecksumInterval == 0 || step + 1 == total;
            var count = globalCounts[step];
            globalCounts.Remove(step);
            // A queued step may wait for the whole of the one before it.
            var timeout = options.StepTimeoutSeconds * (behindAnother ? 2 : 1);
            var replies = OnAllAsync(workers, "step", step, timeout, pipeline.Token, (w, rank, deadline, ct) =>
                clients.For(w.Address).RunStepAsync(new RunStepRequest { JobId = job.Id, Step = step, Lr = lr, GlobalCount = count, ReportChecksum = checksum },
                    deadline: deadline, cancellationToken: ct).ResponseAsync);
            return new InFlight(lr, checksum, clock.Elapsed.TotalMilliseconds, replies);
        }

        bool EvaluatesAfter(long done) => done == total || (spec.Training.EvalInterval > 0 && done % spec.Training.EvalInterval == 0);
        bool CheckpointsAfter(long done) => done == total || (spec.Training.CheckpointInterval > 0 && done % spec.Training.CheckpointInterval == 0);

        InFlight? current = null, next = null;
        try
        {
            current = await LaunchAsync(0, behindAnother: false).ConfigureAwait(false);
            for (long step = 0; step < total; step++)
            {
                cancel.ThrowIfCancellationRequested();
                var done = step + 1;
                next = EvaluatesAfter(done) || CheckpointsAfter(done) ? null : await LaunchAsync(done, behindAnother: true).ConfigureAwait(false);
                var replies = await current!.Replies.ConfigureAwait(false);
                var finishedMs = clock.Elapsed.TotalMilliseconds;
                if (current.Checksum) CheckChecksums(workers, replies.Select(r => r.ParameterChecksum).ToArray(), $"at step {done}");
                var loss = replies.Sum(r => r.LossSum) / replies.Sum(r => r.Count);
                if (!double.IsFinite(loss)) throw new JobFailure($"loss became {loss} at step {done}; lower optimizer.lr or enable training.clip_norm");
                samples += replies.Sum(r => r.Rows);
                var elapsed = clock.Elapsed.TotalSeconds;
                var sps = samples / Math.Max(1e-9, elapsed);
                var eta = elapsed / done * (total - done);
                var epoch = plan.PositionOf(step).Epoch;
                job.Update(i => { i.Step = done; i.Epoch = epoch; i.Loss = loss; i.SamplesPerSecond = sps; }, publishState: false);
                job.Publish(new JobEvent { Step = new StepEvent
                {
                    Step = done, TotalSteps = total, Epoch = epoch, Loss = loss, Lr = current.Lr, SamplesPerSecond = sps, ElapsedSeconds = elapsed, EtaSeconds = eta, Workers = world,
                    ComputeMs = replies.Max(r => r.ComputeMs), AllreduceMs = replies.Max(r => r.AllreduceMs),
                    // From when this step could start (sent, and the step before it finished) to its last reply.
                    StepMs = finishedMs - Math.Max(current.SentMs, lastDone),
                } });
                lastDone = finishedMs;

                if (EvaluatesAfter(done)) await EvaluateAsync(job, workers[0], done, cancel).ConfigureAwait(false);
                if (CheckpointsAfter(done))
                    await CheckpointAsync(job, workers[0], store, done, elapsed, samples, cancel).ConfigureAwait(false);
                current = done < total ? next ?? await LaunchAsync(done, behindAnother: false).ConfigureAwait(false) : null;
                next = null;
            }
        }
        finally
        {
            // Left early (a step or a shard transfer failed, or the job was cancelled): stop the steps still in
            // flight and let them end quietly; the first failure is what the job reports.
            var left = new[] { current, next }.OfType<InFlight>().ToList();
            if (left.Any(f => !f.Replies.IsCompleted)) await pipeline.CancelAsync().ConfigureAwait(false);
            foreach (var f in left) await f.Replies.ContinueWith(t => _ = t.Exception, TaskScheduler.Default).ConfigureAwait(false);
        }
    }

    /// <summary>A step sent to every worker: its learning rate, whether replies carry checksums, when it was sent, and the replies.</summary>
    private sealed record InFlight(double Lr, bool Checksum, double SentMs, Task<RunStepReply[]> Replies);

    private async Task SendShardsAsync(JobRecord job, IReadOnlyList<WorkerRecord> workers, ShardPlan plan, long from, long to, Dictionary<long, long> globalCounts, PreparedData? validation, CancellationToken cancel)
    {
        var world = workers.Count;
        var perRank = Enumerable.Range(0, world).Select(_ => new List<ShardChunk>()).ToArray();
        var sizes = new long[world];
        for (var step = from; step < to; step++)
        {
            long count = 0;
            var position = plan.PositionOf(step);
            for (var rank = 0; rank < world; rank++)
            {
                var rows = plan.RowsFor(step, rank);
                var s = new ShardStep { Step = step, ResetState = position.StepInEpoch == 0 };
                if (rows is not null)
                {
                    s.Rows = rows.Rows;
                    s.Width = rows.Width;
                    s.Count = rows.Count;
                    s.Inputs.AddRange(rows.Inputs.Select(v => (int)v));
                    s.Targets.AddRange(rows.Targets.Select(v => (int)v));
                    if (rows.Lengths is not null) s.Lengths.AddRange(rows.Lengths.Select(v => (int)v));
                    count += rows.Count;
                }
                else
                {
                    s.Width = 1;
                }
                var chunks = perRank[rank];
                if (chunks.Count == 0 || sizes[rank] + s.Inputs.Count + s.Targets.Count > options.ShardChunkValues)
                {
                    chunks.Add(new ShardChunk { JobId = job.Id });
                    sizes[rank] = 0;
                }
                chunks[^1].Steps.Add(s);
                sizes[rank] += s.Inputs.Count + s.Targets.Count;
            }
            globalCounts[step] = count;
        }
        if (validation is not null)
        {
            // Validation goes to rank 0 only, in chunks of its own.
            if (validation.ValidationTokens.Length > 0)
            {
                foreach (var part in validation.ValidationTokens.Chunk(options.ShardChunkValues))
                {
                    var c = new ShardChunk { JobId = job.Id };
                    c.ValidationTokens.AddRange(part);
                    perRank[0].Add(c);
                }
            }
            var current = new ShardChunk { JobId = job.Id };
            long size = 0;
            for (var i = 0; i < validation.ValidationSequences.Count; i++)
            {
                var ex = new ValidationExample { Label = validation.ValidationLabels[i] };
                ex.Tokens.AddRange(validation.ValidationSequences[i]);
                if (size + ex.Tokens.Count > options.ShardChunkValues && current.ValidationExamples.Count > 0)
                {
                    perRank[0].Add(current);
                    current = new ShardChunk { JobId = job.Id };
                    size = 0;
                }
                current.ValidationExamples.Add(ex);
                size += ex.Tokens.Count;
            }
            if (current.ValidationExamples.Count > 0) perRank[0].Add(current);
        }
        await OnAllAsync(workers, "load shard", from, options.CallTimeoutSeconds, cancel, async (w, rank, deadline, ct) =>
        {
            using var call = clients.For(w.Address).LoadShard(deadline: deadline, cancellationToken: ct);
            foreach (var chunk in perRank[rank]) await call.RequestStream.WriteAsync(chunk, ct).ConfigureAwait(false);
            await call.RequestStream.CompleteAsync().ConfigureAwait(false);
            return await call.ResponseAsync.ConfigureAwait(false);
        }).ConfigureAwait(false);
    }

    private async Task EvaluateAsync(JobRecord job, WorkerRecord rank0, long step, CancellationToken cancel)
    {
        var reply = await Call(rank0, "evaluate", step, options.CallTimeoutSeconds, cancel, (deadline, ct) =>
            clients.For(rank0.Address).EvaluateAsync(new EvaluateRequest { JobId = job.Id, BatchSize = job.Spec.Training.BatchSize, MaxBatches = job.Spec.Training.EvalBatches }, deadline: deadline, cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
        var metrics = new Metrics { Loss = reply.Loss, Count = reply.Count };
        if (reply.HasAccuracy) metrics.Accuracy = reply.Accuracy;
        if (reply.HasMacroF1) metrics.MacroF1 = reply.MacroF1;
        if (job.Spec.Task == TaskKinds.LanguageModel)
        {
            metrics.Perplexity = Math.Exp(reply.Loss);
            metrics.BitsPerToken = reply.Loss / Math.Log(2);
        }
        job.Update(i => i.LastEval = metrics, publishState: false);
        job.Publish(new JobEvent { Eval = new EvalEvent { Step = step, Metrics = metrics } });
    }

    private async Task CheckpointAsync(JobRecord job, WorkerRecord rank0, CheckpointStore store, long step, double elapsed, long samples, CancellationToken cancel)
    {
        var bytes = await Call(rank0, "checkpoint", step, options.CallTimeoutSeconds, cancel, async (deadline, ct) =>
        {
            using var call = clients.For(rank0.Address).GetState(new GetStateRequest { JobId = job.Id, Step = step, ElapsedSeconds = elapsed, SamplesSeen = samples }, deadline: deadline, cancellationToken: ct);
            using var ms = new MemoryStream();
            await foreach (var chunk in call.ResponseStream.ReadAllAsync(ct).ConfigureAwait(false)) chunk.Data.WriteTo(ms);
            return ms.ToArray();
        }).ConfigureAwait(false);
        var data = CheckpointFormat.Read(new MemoryStream(bytes), $"state of job {job.Id} from worker {rank0.Id}");
        var path = store.Save(data);
        job.Update(i => i.Checkpoint = path, publishState: false);
        job.Publish(new JobEvent { Log = $"step {step}: checkpoint {path}" });
    }

    private void CheckChecksums(IReadOnlyList<WorkerRecord> workers, double[] sums, string when)
    {
        for (var r = 1; r < sums.Length; r++)
        {
            var scale = Math.Max(1.0, Math.Abs(sums[0]));
            if (Math.Abs(sums[r] - sums[0]) > 1e-9 * scale)
                throw new JobFailure($"replicas diverged {when}: worker {workers[r].Id} (rank {r}) parameter checksum {sums[r]:R} != {sums[0]:R} of worker {workers[0].Id} (rank 0)");
        }
    }

    /// <summary>Runs a call on every worker at once; the first failure fails the job naming that worker and step, and cancels the other calls.</summary>
    private async Task<T[]> OnAllAsync<T>(IReadOnlyList<WorkerRecord> workers, string what, long step, double timeoutSeconds, CancellationToken cancel,
        Func<WorkerRecord, int, DateTime, CancellationToken, Task<T>> call)
    {
        using var group = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var tasks = workers.Select((w, rank) => Call(w, what, step, timeoutSeconds, group.Token, (deadline, ct) => call(w, rank, deadline, ct))).ToList();
        var pending = new List<Task<T>>(tasks);
        while (pending.Count > 0)
        {
            var finished = await Task.WhenAny(pending).ConfigureAwait(false);
            pending.Remove(finished);
            if (finished.IsFaulted || finished.IsCanceled)
            {
                // A worker that reports a failed peer usually hears of it before the coordinator's own call to the
                // dead peer fails: give that call a moment to fail on its own, so the dead worker is the one named.
                if (finished.Exception?.InnerException is JobFailure { PeerFailure: true })
                    await Task.WhenAny(Task.WhenAll(pending), Task.Delay(TimeSpan.FromSeconds(3), CancellationToken.None)).ConfigureAwait(false);
                await group.CancelAsync().ConfigureAwait(false);
                await Task.WhenAll(pending.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default))).ConfigureAwait(false);
                // When a worker dies its ring neighbours fail too, often first: blame the one that could not be reached.
                var failures = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
                var culprit = failures.OfType<JobFailure>().FirstOrDefault(f => f.Unreachable is not null)
                    ?? failures.OfType<JobFailure>().FirstOrDefault(f => !f.PeerFailure)
                    ?? failures.FirstOrDefault();
                if (culprit is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(culprit);
                await finished.ConfigureAwait(false);
            }
        }
        return [.. tasks.Select(t => t.Result)];
    }

    private static async Task<T> Call<T>(WorkerRecord w, string what, long step, double timeoutSeconds, CancellationToken cancel, Func<DateTime, CancellationToken, Task<T>> call)
    {
        try
        {
            return await call(DateTime.UtcNow.AddSeconds(timeoutSeconds), cancel).ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded)
        {
            throw new JobFailure($"worker {w.Id} ({w.Address}) did not finish {what} at step {step} within {timeoutSeconds:F0}s (hung or overloaded)", w);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && !cancel.IsCancellationRequested)
        {
            throw new JobFailure($"worker {w.Id} ({w.Address}) unreachable during {what} at step {step}: {e.Status.Detail}", w);
        }
        catch (RpcException e) when (!cancel.IsCancellationRequested || e.StatusCode == StatusCode.Aborted)
        {
            throw new JobFailure($"worker {w.Id} ({w.Address}) failed {what} at step {step}: {e.StatusCode}: {e.Status.Detail}", peerFailure: e.StatusCode == StatusCode.Aborted);
        }
    }

    private async Task ReleaseAsync(JobRecord job, IReadOnlyList<WorkerRecord> workers)
    {
        await Task.WhenAll(workers.Select(async w =>
        {
            if (registry.StateOf(w.Id) == Protos.Jobs.WorkerState.Lost) return;
            try
            {
                await clients.For(w.Address).ReleaseAsync(new ReleaseRequest { JobId = job.Id, Reason = job.Snapshot().State.ToString() }, deadline: DateTime.UtcNow.AddSeconds(10)).ConfigureAwait(false);
            }
            catch (RpcException e)
            {
                log.LogWarning("could not release worker {Id} from job {Job}: {Status}", w.Id, job.Id, e.Status.Detail);
            }
        })).ConfigureAwait(false);
    }
}
