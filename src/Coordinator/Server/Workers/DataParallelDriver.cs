using System.Diagnostics;
using Dtrain.Checkpoints;
using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Server;

/// <summary>
/// Drives a data-parallel job on its workers: assigns ranks (every replica builds the same model from the seed; the
/// checksums prove it), streams every rank its rows epoch by epoch, runs the steps (pipelined with a window of two),
/// checks that replicas agree, evaluates on every rank (each its part of the validation split) and checkpoints from rank 0. It reaches the workers only through
/// <see cref="JobWorkers"/> (a handle per worker), so it runs the same over gRPC and in memory; failures surface as <see cref="JobFailure"/>.
/// </summary>
public sealed class DataParallelDriver(CoordinatorOptions options)
{
    /// <summary>Runs the job on workers that never change.</summary>
    public Task RunAsync(JobRecord job, PreparedJob prepared, JobWorkers workers, CancellationToken cancel) => RunAsync(job, prepared, new FixedFleet(workers), cancel);

    /// <summary>
    /// Runs the job on <paramref name="fleet"/>: generation after generation, each on the workers it has then. When a
    /// member is lost, hangs, is cut off or drains — or idle workers can join at a step boundary — the generation
    /// ends, every member stops at one committed step (no half-applied optimizer step anywhere), and the next
    /// generation continues from there with the same global batch split over the new world.
    /// </summary>
    public async Task RunAsync(JobRecord job, PreparedJob prepared, IJobFleet fleet, CancellationToken cancel)
    {
        var spec = job.Spec;
        var (source, total) = (prepared.Source, prepared.TotalSteps);
        var assignments = new JobAssignments(job, prepared);
        Assignment Assignment(int rank, int world, long generation, long startStep, IReadOnlyList<ClusterPeer> peers) => assignments.For(rank, world, generation, startStep, peers);

        // Assign ranks: every replica builds the same model from the same seed; the checksums prove it. A worker that
        // dies or is cut off meanwhile (before any step) is dropped and the others are assigned again, in a new generation,
        // at most Coordinator:AssignAttempts times in all, with a doubling wait between attempts.
        JobWorkers workers;
        int world;
        AssignResult[] assigned;
        for (var attempt = 1; ; attempt++)
        {
            workers = fleet.Workers;
            world = workers.Members.Count;
            CheckBatch(spec, world);
            var peers = workers.Peers;
            try
            {
                assigned = await workers.AssignAsync(rank => Assignment(rank, world, fleet.Generation, prepared.StartStep, peers), cancel).ConfigureAwait(false);
                ReplicaChecksums.Check(workers, [.. assigned.Select(a => a.ParameterChecksum)], 1, "after initialisation");
                await ResumeLoader.LoadAsync(job, prepared, workers, assigned, cancel).ConfigureAwait(false);
                break;
            }
            catch (JobFailure e) when (!cancel.IsCancellationRequested)
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

        var progress = new Progress { Next = prepared.StartStep, Evaluated = prepared.StartStep, Clock = Stopwatch.StartNew(), NonFinite = new NonFiniteSteps(spec, prepared.NonFiniteBefore) };
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
                catch (JobFailure e) when (!cancel.IsCancellationRequested)
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
        /// <summary>The last step whose evaluation was published (this run's start step: a resumed job's was done before).</summary>
        public long Evaluated;
        public long Samples;
        public double LastDoneMs;
        public required Stopwatch Clock;
        public long StepsRun;
        /// <summary>Steps skipped for a non-finite loss or gradient, in a row (across generations).</summary>
        public required NonFiniteSteps NonFinite;
    }

    /// <summary>
    /// Runs steps on the current generation until the job ends, or until its membership should change (idle workers can join, a member was drained: at a step boundary).
    /// Every rank streams its rows epoch by epoch (and the validation split, to evaluate its part); steps are pipelined with a window of two.
    /// </summary>
    private async Task RunGenerationAsync(JobRecord job, PreparedJob prepared, IJobFleet fleet, ShardPlan plan, Progress progress, CancellationToken cancel)
    {
        var spec = job.Spec;
        var workers = fleet.Workers;
        var members = workers.Members.Select(m => m.Id).ToList();
        var generation = fleet.Generation;
        var world = members.Count;
        var (data, total, schedule) = (prepared.Data, prepared.TotalSteps, prepared.Schedule);
        var checkpoints = new JobCheckpoints(job);
        var start = progress.Next;
        // Each rank is sent only its part of an in-memory validation split (the parts follow this generation's world).
        var shards = new EpochShards(job.Id, plan, total, start, planned: data.Dataset is not null, cut: ValidationCut.For(spec));
        var sendValidation = true;
        var clock = progress.Clock;
        var deadline = new StepDeadline(options.StepTimeoutSeconds, options.StepDeadline);
        using var generationCancel = CancellationTokenSource.CreateLinkedTokenSource(cancel, fleet.Departed);
        using var pipeline = CancellationTokenSource.CreateLinkedTokenSource(generationCancel.Token);

        // Step k+1 is sent while step k runs (a window of two): workers queue it and start the moment step k ends,
        // so neither the round trip nor the coordinator's bookkeeping sits between two steps. Steps after which the
        // coordinator evaluates or checkpoints are not overlapped: those need the replicas to stand still.
        async Task<InFlight> LaunchAsync(long step, bool behindAnother)
        {
            // Stream each rank its rows of the whole next epoch (and the validation split, once per generation).
            var validation = sendValidation ? data : null;
            sendValidation = false;
            await shards.EnsureLoadedAsync(step, workers, world, rank => rank, validation, pipeline.Token).ConfigureAwait(false);
            var lr = schedule.At(step);
            var checksum = (step + 1) % options.ChecksumInterval == 0 || step + 1 == total;
            var count = shards.TakeCount(step);
            // The deadline follows the steps seen so far (a first step warms up); a queued step may wait for the whole of the one before it.
            var timeout = deadline.Next(behindAnother);
            var replies = workers.RunStepAsync(new StepCommand(job.Id, step, lr, count, checksum, generation), timeout, pipeline.Token);
            return new InFlight(lr, checksum, clock.Elapsed.TotalMilliseconds, replies);
        }

        bool EvaluatesAfter(long done) => prepared.EvaluatesAfter(done);
        // An evaluation after step `done` that is due and not done yet: one whose generation failed during it is done
        // first by the next generation (its members get the validation split first), so every scheduled evaluation
        // appears once in the job's metrics.
        bool EvaluationDue(long done) => EvaluatesAfter(done) && progress.Evaluated < done;
        async Task EvaluateOnceAsync(long done)
        {
            await EvaluateAsync(job, workers, done, generationCancel.Token).ConfigureAwait(false);
            progress.Evaluated = done;
        }
        bool CheckpointsAfter(long done) => prepared.CheckpointsAfter(done);
        // Joiners are admitted, and drained members let go, at a step boundary: no step is launched behind one while a change is due.
        bool Pause(long done) => done < total && fleet.ChangeDue is not null;

        // Re-formed after the last step (its evaluation or checkpoint failed, e.g. a rank was lost during it): only what
        // follows the last step is left, on the new members — they get the validation split first. (Launching step
        // `total` here used to fail the job with a KeyNotFoundException.)
        if (start >= total)
        {
            if (EvaluationDue(total))
            {
                await shards.EnsureLoadedAsync(start, workers, world, rank => rank, data, generationCancel.Token).ConfigureAwait(false);
                await EvaluateOnceAsync(total).ConfigureAwait(false);
            }
            if (CheckpointsAfter(total))
                await CheckpointAsync(job, workers, checkpoints, total, prepared.ElapsedBefore + clock.Elapsed.TotalSeconds, prepared.SamplesBefore + progress.Samples,
                    progress.NonFinite.Consecutive, generationCancel.Token).ConfigureAwait(false);
            return;
        }

        // Re-formed after a mid-job evaluation failed (a member lost or past its deadline during it): that evaluation first.
        if (EvaluationDue(start))
        {
            await shards.EnsureLoadedAsync(start, workers, world, rank => rank, data, generationCancel.Token).ConfigureAwait(false);
            sendValidation = false;
            await EvaluateOnceAsync(start).ConfigureAwait(false);
        }

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
                if (current.Checksum) ReplicaChecksums.Check(workers, [.. replies.Select(r => r.ParameterChecksum)], 1, $"at step {done}");
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
                deadline.Record(stepMs);
                job.Update(p => p with { Step = done, Epoch = epoch, Loss = loss, SamplesPerSecond = sps }, publishState: false);
                job.PublishStep(new StepReport
                {
                    Step = done, TotalSteps = total, Epoch = epoch, Loss = loss, Lr = current.Lr, SamplesPerSecond = sps, ElapsedSeconds = prepared.ElapsedBefore + elapsed, EtaSeconds = eta, Workers = world,
                    ComputeMs = replies.Max(r => r.ComputeMs), AllreduceMs = replies.Max(r => r.AllreduceMs), DataWaitMs = replies.Max(r => r.DataWaitMs),
                    // From when this step could start (sent, and the step before it finished) to its last reply.
                    StepMs = stepMs, GradNorm = replies[0].GradNorm,
                    Skipped = skipped is not null, Nonfinite = skipped is null ? "" : replies[0].NonFinite,
                });
                progress.LastDoneMs = finishedMs;
                if (skipped is not null)
                {
                    job.Log(skipped.Line);
                    if (skipped.Failure is { } failure) throw new JobFailure(failure) { Terminal = true };
                }

                if (EvaluatesAfter(done)) await EvaluateOnceAsync(done).ConfigureAwait(false);
                if (CheckpointsAfter(done))
                    await CheckpointAsync(job, workers, checkpoints, done, prepared.ElapsedBefore + elapsed, prepared.SamplesBefore + progress.Samples, progress.NonFinite.Consecutive, generationCancel.Token).ConfigureAwait(false);
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

    /// <summary>A step sent to every worker: its learning rate, whether replies carry checksums, when it was sent, and the replies.</summary>
    private sealed record InFlight(double Lr, bool Checksum, double SentMs, Task<StepResult[]> Replies);

    private static async Task EvaluateAsync(JobRecord job, JobWorkers workers, long step, CancellationToken cancel)
    {
        var sums = await workers.EvaluateAsync(new EvalCommand(job.Id, job.Spec.Training.BatchSize, job.Spec.Training.EvalBatches), step, cancel).ConfigureAwait(false);
        job.PublishEval(step, sums.ToMetrics());
    }

    private static async Task CheckpointAsync(JobRecord job, JobWorkers workers, JobCheckpoints checkpoints, long step, double elapsed, long samples, int nonFiniteStreak, CancellationToken cancel)
    {
        var started = checkpoints.Now();
        var bytes = await workers.GetStateAsync(0, new StateSnapshot(job.Id, step, elapsed, samples, nonFiniteStreak), cancel).ConfigureAwait(false);
        var data = CheckpointFormat.Read(new MemoryStream(bytes), $"state of job {job.Id} from worker {workers.Members[0].Id}");
        checkpoints.Save(data, step, started);
    }

    /// <summary>Every worker needs at least one row of the global batch.</summary>
    private static void CheckBatch(JobSpec spec, int world)
    {
        if (spec.Training.BatchSize < world)
            throw new JobFailure($"training.batch_size {spec.Training.BatchSize} is smaller than the {world} workers: every worker needs at least one row");
    }
}
