using System.Diagnostics;
using Dtrain.Checkpoints;
using Dtrain.Distributed;
using Dtrain.Protos.Worker;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// Drives a data-parallel job on its workers: assigns ranks (every replica builds the same model from the seed; the
/// checksums prove it), streams every rank its rows epoch by epoch, runs the steps (pipelined with a window of two),
/// checks that replicas agree, evaluates and checkpoints from rank 0. It reaches the workers only through
/// <see cref="IJobWorkers"/>, so it runs the same over gRPC and in memory; failures surface as <see cref="JobFailure"/>.
/// </summary>
public sealed class DataParallelDriver(CoordinatorOptions options)
{
    /// <summary>Runs the job on workers that never change.</summary>
    public Task RunAsync(JobRecord job, PreparedJob prepared, IJobWorkers workers, CancellationToken cancel) => RunAsync(job, prepared, new FixedFleet(workers), cancel);

    /// <summary>
    /// Runs the job on <paramref name="fleet"/>: generation after generation, each on the workers it has then. When a
    /// member is lost, hangs, is cut off or drains — or idle workers can join at a step boundary — the generation
    /// ends, every member stops at one committed step (no half-applied optimizer step anywhere), and the next
    /// generation continues from there with the same global batch split over the new world.
    /// </summary>
    public async Task RunAsync(JobRecord job, PreparedJob prepared, IJobFleet fleet, CancellationToken cancel)
    {
        var spec = job.Spec;
        var (data, source, total) = (prepared.Data, prepared.Source, prepared.TotalSteps);
        // The spec as on the submitting machine (the data as the user has it): workers read no data files, and the checkpoints they capture keep it.
        var specJson = JobSpecSerializer.Serialize(job.SpecOnClient);
        var tokenizer = data.Tokenizer.ToState();
        AssignRequest Assignment(int rank, int world, long generation, long startStep, IReadOnlyList<Peer> peers)
        {
            var request = new AssignRequest
            {
                JobId = job.Id, Generation = generation, SpecJson = specJson, Rank = rank, WorldSize = world,
                TokenizerKind = tokenizer.Kind, TokenizerLowercase = tokenizer.Lowercase,
                TotalSteps = total, StepsPerEpoch = source.StepsPerEpoch, Threads = spec.Training.Threads, StartStep = startStep,
            };
            request.Peers.AddRange(peers);
            request.TokenizerTokens.AddRange(tokenizer.Tokens);
            request.Labels.AddRange(data.Labels.Names);
            return request;
        }

        // Assign ranks: every replica builds the same model from the same seed; the checksums prove it. A worker that
        // dies or is cut off meanwhile (before any step) is dropped and the others are assigned again, in a new generation,
        // at most Coordinator:AssignAttempts times in all, with a doubling wait between attempts.
        IJobWorkers workers;
        int world;
        AssignReply[] assigned;
        for (var attempt = 1; ; attempt++)
        {
            workers = fleet.Workers;
            world = workers.Members.Count;
            CheckBatch(spec, world);
            var peers = workers.Members.Select((w, r) => new Peer { Rank = r, WorkerId = w.Id, Address = w.Address }).ToList();
            try
            {
                assigned = await workers.AssignAsync(rank => Assignment(rank, world, fleet.Generation, prepared.StartStep, peers), cancel).ConfigureAwait(false);
                CheckChecksums(workers, assigned.Select(a => a.ParameterChecksum).ToArray(), "after initialisation");
                await ResumeLoader.LoadAsync(job, prepared, workers, assigned, cancel).ConfigureAwait(false);
                break;
            }
            catch (Exception e) when (!cancel.IsCancellationRequested && e is JobFailure or Grpc.Core.RpcException)
            {
                if (!await fleet.AbsorbsAsync(e, cancel).ConfigureAwait(false)) throw;
                if (attempt >= options.AssignAttempts)
                    throw new JobFailure($"assigning the job's workers failed {attempt} time(s) before step {prepared.StartStep} (Coordinator:AssignAttempts = {options.AssignAttempts}); the last attempt: {e.Message}") { Terminal = true };
                var backoff = options.AssignBackoffSeconds * Math.Pow(2, Math.Min(attempt - 1, 4));
                job.Log($"generation {fleet.Generation}: the assignment failed before step {prepared.StartStep} (attempt {attempt} of {options.AssignAttempts}): {e.Message}; assigning again without it in {backoff:0.##} s");
                await Task.Delay(TimeSpan.FromSeconds(backoff), cancel).ConfigureAwait(false);
                await fleet.ReassignAsync(e.Message, cancel).ConfigureAwait(false);
            }
        }
        job.Transition(JobTrigger.Run, "", p => p with { Parameters = assigned[0].Parameters, TotalSteps = total });
        job.Log($"{world} worker(s): {string.Join(", ", workers.Members.Select((w, r) => $"rank {r} = {w.Id} {w.Address}"))}; {assigned[0].Parameters:N0} parameters, {total} steps");

        var progress = new Progress { Next = prepared.StartStep, Clock = Stopwatch.StartNew(), NonFinite = new NonFiniteSteps(spec, prepared.NonFiniteBefore) };
        while (true)
        {
            var plan = new ShardPlan(source, fleet.Workers.Members.Count, total);
            string reason;
            try
            {
                await RunGenerationAsync(job, prepared, fleet, plan, progress, cancel).ConfigureAwait(false);
                if (progress.Next == total) return;
                reason = fleet.ChangeDue ?? "the membership changes";
            }
            catch (Exception e) when (!cancel.IsCancellationRequested && e is not (SpecException or ArgumentException))
            {
                if (!await fleet.AbsorbsAsync(e, cancel).ConfigureAwait(false)) throw;
                reason = e is JobFailure ? e.Message : $"a worker of generation {fleet.Generation} went away";
            }
            // Re-form on who is left (and who can join); a member lost while re-forming is dropped and the re-forming repeated.
            var before = plan;
            var beforeMembers = fleet.Workers.Members.Select(m => m.Id).ToList();
            var beforeGeneration = fleet.Generation;
            Reconfiguration change;
            while (true)
            {
                try
                {
                    change = await fleet.ReconfigureAsync(reason, Assignment, cancel).ConfigureAwait(false);
                    break;
                }
                catch (Exception e) when (!cancel.IsCancellationRequested && e is JobFailure or Grpc.Core.RpcException)
                {
                    if (!await fleet.AbsorbsAsync(e, cancel).ConfigureAwait(false)) throw;
                    reason = e.Message;
                }
            }
            // Steps every survivor had applied but whose replies the coordinator never saw are committed all the same.
            for (var step = progress.Next; step < change.NextStep; step++)
                job.Ledger.Commit(step, before, beforeGeneration, beforeMembers);
            progress.Next = change.NextStep;
            CheckBatch(spec, change.Members.Count);
            job.Log($"generation {change.Generation}: {change.Members.Count} worker(s) ({string.Join(", ", change.Members)}) from step {change.NextStep}" +
                (change.Gone.Count > 0 ? $"; without {string.Join(", ", change.Gone)}" : "") + (change.Joined.Count > 0 ? $"; admitted {string.Join(", ", change.Joined)}" : "") + $" ({reason})");
        }
    }

    /// <summary>Where the job stands across generations: the next step to commit, samples and timing since this run started.</summary>
    private sealed class Progress
    {
        public long Next;
        public long Samples;
        public double LastDoneMs;
        public required Stopwatch Clock;
        public long StepsRun;
        /// <summary>Steps skipped for a non-finite loss or gradient, in a row (across generations).</summary>
        public required NonFiniteSteps NonFinite;
    }

    /// <summary>
    /// Runs steps on the current generation until the job ends, or until its membership should change (idle workers can join, a member was drained: at a step boundary).
    /// Every rank streams its rows epoch by epoch (rank 0 also the validation split); steps are pipelined with a window of two.
    /// </summary>
    private async Task RunGenerationAsync(JobRecord job, PreparedJob prepared, IJobFleet fleet, ShardPlan plan, Progress progress, CancellationToken cancel)
    {
        var spec = job.Spec;
        var workers = fleet.Workers;
        var members = workers.Members.Select(m => m.Id).ToList();
        var generation = fleet.Generation;
        var world = members.Count;
        var (data, total, schedule) = (prepared.Data, prepared.TotalSteps, prepared.Schedule);
        var store = new CheckpointStore(Path.Combine(job.Dir, "checkpoints"), spec.Training.KeepCheckpoints, ownerOnly: true);
        var globalCounts = new Dictionary<long, long>();
        var start = progress.Next;
        long loadedUntil = start;
        var sendValidation = true;
        var clock = progress.Clock;
        var firstStep = true;
        var recentMs = new Queue<double>();
        using var generationCancel = CancellationTokenSource.CreateLinkedTokenSource(cancel, fleet.Departed);
        using var pipeline = CancellationTokenSource.CreateLinkedTokenSource(generationCancel.Token);

        // Step k+1 is sent while step k runs (a window of two): workers queue it and start the moment step k ends,
        // so neither the round trip nor the coordinator's bookkeeping sits between two steps. Steps after which the
        // coordinator evaluates or checkpoints are not overlapped: those need the replicas to stand still.
        async Task<InFlight> LaunchAsync(long step, bool behindAnother)
        {
            if (step == loadedUntil)
            {
                // Stream each rank its rows of the whole next epoch (and rank 0 the validation split, once per generation).
                var epochEnd = Math.Min(total, (plan.PositionOf(step).Epoch + 1) * plan.StepsPerEpoch);
                await SendShardsAsync(job, workers, plan, step, epochEnd, globalCounts, sendValidation ? data : null, pipeline.Token).ConfigureAwait(false);
                sendValidation = false;
                loadedUntil = epochEnd;
            }
            var lr = schedule.At(step);
            var checksum = (step + 1) % options.ChecksumInterval == 0 || step + 1 == total;
            var count = globalCounts[step];
            globalCounts.Remove(step);
            // The deadline follows the steps seen so far (a first step warms up); a queued step may wait for the whole of the one before it.
            var timeout = StepDeadline(firstStep, recentMs) * (behindAnother ? 2 : 1);
            firstStep = false;
            var replies = workers.RunStepAsync(new RunStepRequest { JobId = job.Id, Step = step, Lr = lr, GlobalCount = count, ReportChecksum = checksum, Generation = generation }, timeout, pipeline.Token);
            return new InFlight(lr, checksum, clock.Elapsed.TotalMilliseconds, replies);
        }

        bool EvaluatesAfter(long done) => prepared.EvaluatesAfter(spec.Training, done);
        bool CheckpointsAfter(long done) => prepared.CheckpointsAfter(spec.Training, done);
        // Joiners are admitted, and drained members let go, at a step boundary: no step is launched behind one while a change is due.
        bool Pause(long done) => done < total && fleet.ChangeDue is not null;

        InFlight? current = null, next = null;
        try
        {
            current = await LaunchAsync(start, behindAnother: false).ConfigureAwait(false);
            for (var step = start; step < total; step++)
            {
                generationCancel.Token.ThrowIfCancellationRequested();
                var done = step + 1;
                next = EvaluatesAfter(done) || CheckpointsAfter(done) || Pause(done) ? null : await LaunchAsync(done, behindAnother: true).ConfigureAwait(false);
                var replies = await current!.Replies.ConfigureAwait(false);
                var finishedMs = clock.Elapsed.TotalMilliseconds;
                if (current.Checksum) CheckChecksums(workers, replies.Select(r => r.ParameterChecksum).ToArray(), $"at step {done}");
                job.Ledger.Commit(step, plan, generation, members);
                progress.Next = done;
                progress.StepsRun++;
                var loss = replies.Sum(r => r.LossSum) / replies.Sum(r => r.Count);
                var skipped = progress.NonFinite.Record(done, NonFiniteReplies.DataParallel(replies, workers, done, loss));
                progress.Samples += replies.Sum(r => r.Rows);
                var elapsed = clock.Elapsed.TotalSeconds;
                var sps = progress.Samples / Math.Max(1e-9, elapsed);
                var eta = elapsed / progress.StepsRun * (total - done);
                var epoch = plan.PositionOf(step).Epoch;
                var stepMs = finishedMs - Math.Max(current.SentMs, progress.LastDoneMs);
                recentMs.Enqueue(stepMs);
                if (recentMs.Count > 20) recentMs.Dequeue();
                job.Update(p => p with { Step = done, Epoch = epoch, Loss = loss, SamplesPerSecond = sps }, publishState: false);
                job.PublishStep(new StepReport
                {
                    Step = done, TotalSteps = total, Epoch = epoch, Loss = loss, Lr = current.Lr, SamplesPerSecond = sps, ElapsedSeconds = prepared.ElapsedBefore + elapsed, EtaSeconds = eta, Workers = world,
                    ComputeMs = replies.Max(r => r.ComputeMs), AllreduceMs = replies.Max(r => r.AllreduceMs),
                    // From when this step could start (sent, and the step before it finished) to its last reply.
                    StepMs = stepMs, GradNorm = replies[0].GradNorm,
                    Skipped = skipped is not null, Nonfinite = skipped is null ? "" : replies[0].Nonfinite,
                });
                progress.LastDoneMs = finishedMs;
                if (skipped is not null)
                {
                    job.Log(skipped.Line);
                    if (skipped.Failure is { } failure) throw new JobFailure(failure) { Terminal = true };
                }

                if (EvaluatesAfter(done)) await EvaluateAsync(job, workers, done, generationCancel.Token).ConfigureAwait(false);
                if (CheckpointsAfter(done))
                    await CheckpointAsync(job, workers, store, done, prepared.ElapsedBefore + elapsed, prepared.SamplesBefore + progress.Samples, progress.NonFinite.Consecutive, generationCancel.Token).ConfigureAwait(false);
                if (done < total && next is null && Pause(done)) return;
                current = done < total ? next ?? await LaunchAsync(done, behindAnother: false).ConfigureAwait(false) : null;
                next = null;
            }
        }
        finally
        {
            // Left early (a step or a shard transfer failed, the membership changed, or the job was cancelled): stop
            // the steps still in flight and let them end quietly; the first failure is what the job reports.
            var left = new[] { current, next }.OfType<InFlight>().ToList();
            if (left.Any(f => !f.Replies.IsCompleted)) await pipeline.CancelAsync().ConfigureAwait(false);
            foreach (var f in left) await f.Replies.ContinueWith(t => _ = t.Exception, TaskScheduler.Default).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// How long a step may take before its slowest worker counts as hung: at least <see cref="CoordinatorOptions.StepTimeoutSeconds"/>,
    /// and 10 times the slowest of the last 20 steps; a generation's first step (warm-up, shards) gets 6 times the minimum.
    /// </summary>
    private double StepDeadline(bool first, IEnumerable<double> recentMs)
    {
        if (first) return Math.Max(options.StepTimeoutSeconds * 6, 60);
        var slowest = recentMs.DefaultIfEmpty(0).Max() / 1000;
        return Math.Max(options.StepTimeoutSeconds, 10 * slowest);
    }

    /// <summary>A step sent to every worker: its learning rate, whether replies carry checksums, when it was sent, and the replies.</summary>
    private sealed record InFlight(double Lr, bool Checksum, double SentMs, Task<RunStepReply[]> Replies);

    private async Task SendShardsAsync(JobRecord job, IJobWorkers workers, ShardPlan plan, long from, long to, Dictionary<long, long> globalCounts, PreparedData? validation, CancellationToken cancel)
    {
        var perRank = BuildShards(job.Id, plan, workers.Members.Count, from, to, globalCounts, validation, options.ShardChunkValues);
        await workers.LoadShardsAsync(perRank, from, cancel).ConfigureAwait(false);
    }

    /// <summary>
    /// Every rank's rows of steps [<paramref name="from"/>, <paramref name="to"/>) in chunks of at most
    /// <paramref name="chunkValues"/> values, and the validation split for rank 0 when given; records each step's global count.
    /// </summary>
    internal static List<ShardChunk>[] BuildShards(string jobId, ShardPlan plan, int world, long from, long to, Dictionary<long, long> globalCounts, PreparedData? validation, int chunkValues)
    {
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
                if (chunks.Count == 0 || sizes[rank] + s.Inputs.Count + s.Targets.Count > chunkValues)
                {
                    chunks.Add(new ShardChunk { JobId = jobId });
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
                foreach (var part in validation.ValidationTokens.Chunk(chunkValues))
                {
                    var c = new ShardChunk { JobId = jobId };
                    c.ValidationTokens.AddRange(part);
                    perRank[0].Add(c);
                }
            }
            var current = new ShardChunk { JobId = jobId };
            long size = 0;
            for (var i = 0; i < validation.ValidationSequences.Count; i++)
            {
                var ex = new ValidationExample { Label = validation.ValidationLabels[i] };
                ex.Tokens.AddRange(validation.ValidationSequences[i]);
                if (size + ex.Tokens.Count > chunkValues && current.ValidationExamples.Count > 0)
                {
                    perRank[0].Add(current);
                    current = new ShardChunk { JobId = jobId };
                    size = 0;
                }
                current.ValidationExamples.Add(ex);
                size += ex.Tokens.Count;
            }
            if (current.ValidationExamples.Count > 0) perRank[0].Add(current);
        }
        return perRank;
    }

    private static async Task EvaluateAsync(JobRecord job, IJobWorkers workers, long step, CancellationToken cancel)
    {
        var reply = await workers.EvaluateAsync(0, new EvaluateRequest { JobId = job.Id, BatchSize = job.Spec.Training.BatchSize, MaxBatches = job.Spec.Training.EvalBatches }, step, cancel).ConfigureAwait(false);
        job.PublishEval(step, new EvalMetrics(reply.Loss, reply.Count) { Accuracy = reply.HasAccuracy ? reply.Accuracy : null, MacroF1 = reply.HasMacroF1 ? reply.MacroF1 : null });
    }

    private static async Task CheckpointAsync(JobRecord job, IJobWorkers workers, CheckpointStore store, long step, double elapsed, long samples, int nonFiniteStreak, CancellationToken cancel)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var bytes = await workers.GetStateAsync(0, new GetStateRequest { JobId = job.Id, Step = step, ElapsedSeconds = elapsed, SamplesSeen = samples, NonfiniteStreak = nonFiniteStreak }, step, cancel).ConfigureAwait(false);
        var data = CheckpointFormat.Read(new MemoryStream(bytes), $"state of job {job.Id} from worker {workers.Members[0].Id}");
        // The ledger's steps up to this one are on disk before the checkpoint file is: a coordinator killed right after
        // resumes from this file, and its ledger must already hold every step the file includes.
        job.Store?.Flush();
        var path = store.Save(data);
        var size = new FileInfo(path).Length;
        job.Update(p => p with { Checkpoint = path, CheckpointSeconds = clock.Elapsed.TotalSeconds, CheckpointBytes = size }, publishState: false);
        job.Log($"step {step}: checkpoint {path}");
    }

    /// <summary>Every worker needs at least one row of the global batch.</summary>
    private static void CheckBatch(JobSpec spec, int world)
    {
        if (spec.Training.BatchSize < world)
            throw new JobFailure($"training.batch_size {spec.Training.BatchSize} is smaller than the {world} workers: every worker needs at least one row");
    }

    private static void CheckChecksums(IJobWorkers workers, double[] sums, string when)
    {
        for (var r = 1; r < sums.Length; r++)
        {
            if (!ParameterChecksums.Agree(sums[r], sums[0]))
                throw new JobFailure($"replicas diverged {when}: worker {workers.Members[r].Id} (rank {r}) parameter checksum {sums[r]:R} != {sums[0]:R} of worker {workers.Members[0].Id} (rank 0)");
        }
    }
}
