using System.Diagnostics;
using Dtrain.Checkpoints;
using Dtrain.Distributed;
using Dtrain.Distributed.Pipeline;
using Dtrain.Cluster;
using Dtrain.Runtime;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using static TorchSharp.torch;

namespace Dtrain.Server;

/// <summary>
/// Drives a pipelined job (language model or classifier): D data-parallel replicas × K stages on D × K workers (slot = replica × K +
/// stage, in the order the workers were reserved). Each worker gets its stage's layers, its neighbours' addresses and
/// the ring of the same stage of every replica; each replica's stages get that replica's rows. A step is two rounds:
/// RunStep (every stage follows the schedule, all-reduces with its replicas and reports its squared gradient norm),
/// then ApplyStep with the whole model's norm, so clipping is global. For evaluation and checkpoints the coordinator
/// gathers every stage's parameters and optimizer state into the whole model, in today's checkpoint format.
/// Every committed step goes into the job's sample ledger: its global batch's rows split among the D replicas (each
/// named by its stages' workers joined with '+', e.g. <c>w1+w2</c>), as a data-parallel job's among its workers.
/// A dataset job (data.dataset) sends the stages only the plan, as a data-parallel one: every stage of a replica reads
/// the replica's rows from the dataset itself (stage 0 uses the inputs, the last stage the targets), and the
/// coordinator evaluates the gathered model on the dataset's validation split read through its shards, each id,
/// record and label checked as it is read — it never holds the corpus.
/// </summary>
public sealed class PipelineDriver(CoordinatorOptions options)
{
    public async Task RunAsync(JobRecord job, PreparedJob prepared, JobWorkers workers, CancellationToken cancel)
    {
        var spec = job.Spec;
        var pipeline = spec.Parallelism?.Pipeline ?? throw new ArgumentException("not a pipeline job");
        var k = pipeline.Stages;
        var n = workers.Members.Count;
        var (data, source, total, lrSchedule) = (prepared.Data, prepared.Source, prepared.TotalSteps, prepared.Schedule);
        var vocab = data.Tokenizer.VocabSize;
        var outputs = TrainingTasks.For(spec).Outputs(vocab, data.Labels.Count);
        PipelinePlan layout;
        try
        {
            layout = PipelinePlan.Create(spec, n, vocab, outputs);
        }
        catch (ArgumentException e)
        {
            throw new JobFailure($"pipeline layout: {e.Message}");
        }
        var d = layout.Replicas;
        if (d * k != n) throw new JobFailure($"the layout uses {d} replica(s) × {k} stages = {d * k} workers, but the job has {n}: submit it with --workers {d * k}");
        var shards = new ShardPlan(source, d, total);
        var saver = new JobCheckpoints(job);
        int Slot(int replica, int stage) => replica * k + stage;

        var generation = job.NextGeneration();
        var assignments = new JobAssignments(job, prepared);
        var assigned = await workers.AssignAsync(slot =>
        {
            var (replica, stage) = (slot / k, slot % k);
            var plan = layout.Stages[stage];
            var place = new PipelineStageAssignment(stage, k, plan.FirstLayer, plan.LayerCount, pipeline.Microbatches, pipeline.Schedule, replica, d,
                Previous: stage > 0 ? workers.Peer(Slot(replica, stage - 1), -1) : null,
                Next: stage < k - 1 ? workers.Peer(Slot(replica, stage + 1), -1) : null);
            // The ring of this stage: the same stage of every replica.
            return assignments.For(replica, d, generation, prepared.StartStep, [.. Enumerable.Range(0, d).Select(r => workers.Peer(Slot(r, stage), r))], place);
        }, cancel).ConfigureAwait(false);
        ReplicaChecksums.Check(workers, [.. assigned.Select(a => a.ParameterChecksum)], k, "after initialisation");
        await ResumeLoader.LoadAsync(job, prepared, workers, assigned, cancel).ConfigureAwait(false);
        var start = prepared.StartStep;
        job.Transition(JobTrigger.Run, "", p => p with { Parameters = layout.Model.Total, TotalSteps = total });
        job.Log($"pipeline: {d} replica(s) × {k} stages, {pipeline.Microbatches} micro-batch(es), {pipeline.Schedule}; " +
            string.Join(", ", Enumerable.Range(0, n).Select(slot => $"replica {slot / k} stage {slot % k} (layers {layout.Stages[slot % k].FirstLayer}-{layout.Stages[slot % k].EndLayer - 1}) = {workers.Members[slot].Id} {workers.Members[slot].Address}")) +
            $"; {layout.Model.Total:N0} parameters, {total} steps");

        using var torch = new TorchThread($"gather-{job.Id}", 1);
        var epochs = new EpochShards(job.Id, shards, total, start, planned: data.Dataset is not null);
        long samples = 0;
        var clock = Stopwatch.StartNew();
        var lastStage = Enumerable.Range(0, d).Select(r => Slot(r, k - 1)).ToArray();
        var nonFinite = new NonFiniteSteps(spec, prepared.NonFiniteBefore);
        // The sample ledger's workers are the D replicas (the shard plan's ranks), each named by its stages' workers in stage order joined with '+'.
        var replicaIds = Enumerable.Range(0, d).Select(r => string.Join('+', Enumerable.Range(0, k).Select(s => workers.Members[Slot(r, s)].Id))).ToArray();
        for (long step = start; step < total; step++)
        {
            cancel.ThrowIfCancellationRequested();
            // Every stage of a replica gets the replica's rows (only the first stage reads the inputs, the last the targets);
            // a dataset job's stages get the plan and read them. The coordinator evaluates: no stage gets a validation split.
            await epochs.EnsureLoadedAsync(step, workers, d, slot => slot / k, null, cancel).ConfigureAwait(false);
            var started = clock.Elapsed.TotalMilliseconds;
            var lr = lrSchedule.At(step);
            var count = epochs.TakeCount(step);
            var replies = await workers.RunStepAsync(new StepCommand(job.Id, step, lr, count), options.StepTimeoutSeconds, cancel).ConfigureAwait(false);
            // After the all-reduce every replica of a stage holds the same gradients: one replica's norms cover the model.
            var norm = Math.Sqrt(Enumerable.Range(0, k).Sum(s => replies[Slot(0, s)].SquaredGradNorm));
            var done = step + 1;
            var checksum = done % options.ChecksumInterval == 0 || done == total;
            var loss = lastStage.Sum(s => replies[s].LossSum) / lastStage.Sum(s => replies[s].Count);
            // A non-finite loss or gradient norm anywhere: every stage of every replica skips the optimizer step.
            var why = NonFiniteReplies.Pipeline(replies, workers, k, lastStage, loss, norm);
            var applied = await workers.ApplyStepAsync(new ApplyCommand(job.Id, step, lr, count, why is null ? norm : 0, checksum, why is not null), cancel).ConfigureAwait(false);
            if (checksum) ReplicaChecksums.Check(workers, [.. applied.Select(a => a.ParameterChecksum)], k, $"at step {done}");
            // Committed once every stage of every replica applied it (a skipped non-finite step used its rows all the same).
            job.Ledger.Commit(step, shards, generation, replicaIds);
            var skipped = nonFinite.Record(done, why);
            samples += lastStage.Sum(s => replies[s].Rows);
            var runSeconds = clock.Elapsed.TotalSeconds;
            var elapsed = prepared.ElapsedBefore + runSeconds;
            var stepMs = clock.Elapsed.TotalMilliseconds - started;
            var epoch = shards.PositionOf(step).Epoch;
            job.Update(p => p with { Step = done, Epoch = epoch, Loss = loss, SamplesPerSecond = samples / Math.Max(1e-9, runSeconds) }, publishState: false);
            job.PublishStep(new StepReport
            {
                Step = done, TotalSteps = total, Epoch = epoch, Loss = loss, Lr = lr, SamplesPerSecond = samples / Math.Max(1e-9, runSeconds), ElapsedSeconds = elapsed,
                EtaSeconds = runSeconds / (done - start) * (total - done), Workers = n, ComputeMs = replies.Max(r => r.ComputeMs), AllreduceMs = replies.Max(r => r.AllreduceMs), StepMs = stepMs, GradNorm = norm,
                // A dataset job's stages read their rows: the longest any stage waited for them (read ahead while the step before ran).
                DataWaitMs = replies.Max(r => r.DataWaitMs),
                Bubble = replies.Average(r => r.IdleMs / Math.Max(1e-9, r.IdleMs + r.ComputeMs)),
                Skipped = skipped is not null, Nonfinite = why is null ? "" : double.IsFinite(loss) ? NonFiniteCauses.Gradient : NonFiniteCauses.Loss,
                StageComputeMs = [.. Enumerable.Range(0, k).Select(s => Enumerable.Range(0, d).Max(r => replies[Slot(r, s)].ComputeMs))],
            });
            if (skipped is not null)
            {
                job.Log(skipped.Line);
                if (skipped.Failure is { } failure) throw new JobFailure(failure) { Terminal = true };
            }

            var evaluates = prepared.EvaluatesAfter(done);
            var checkpoints = prepared.CheckpointsAfter(done);
            if (!evaluates && !checkpoints) continue;
            var parameters = new List<ParameterTensor>();
            for (var s = 0; s < k; s++)
                parameters.AddRange(await workers.GetStageParametersAsync(Slot(0, s), new StateSnapshot(job.Id, done), cancel).ConfigureAwait(false));
            var training = new TrainingState { Step = done, ElapsedSeconds = elapsed, SamplesSeen = prepared.SamplesBefore + samples, LastLr = lr, NonFiniteStreak = nonFinite.Consecutive };
            var (metrics, checkpoint) = await torch.RunAsync(() => Gather(job, data, parameters, training, evaluates, checkpoints)).ConfigureAwait(false);
            if (metrics is not null) job.PublishEval(done, metrics);
            if (checkpoint is not null)
            {
                saver.Save(checkpoint, done, saver.Now(), $" (gathered from {k} stages)");
            }
        }
    }

    /// <summary>Builds the whole model from the stages' parameters; evaluates it on the validation split and/or captures a checkpoint.</summary>
    private static (Training.EvalMetrics?, CheckpointData?) Gather(JobRecord job, PreparedData data, IReadOnlyList<ParameterTensor> parameters, TrainingState training, bool evaluate, bool checkpoint)
    {
        var spec = job.Spec;
        using var engine = new TrainingEngine(spec, data.Tokenizer.VocabSize, data.Labels.Count, CPU);
        // One way parameters and their optimizer state move into a model, here as for a resumed replica or stage.
        try
        {
            ParameterTransfer.Load(engine.Model.named_parameters().Select(p => (p.name, p.parameter)), (TorchSharp.Modules.OptimizerHelper)engine.Optimizer,
                parameters.ToDictionary(p => p.Name, StringComparer.Ordinal), exact: true, allowNonFinite: true);
        }
        catch (InvalidDataException e)
        {
            throw new JobFailure($"gathering the model from every stage: {e.Message}");
        }
        Training.EvalMetrics? metrics = null;
        if (evaluate)
        {
            try
            {
                metrics = TrainingTasks.For(spec).Evaluate(engine, Validation(job, data), spec.Training.BatchSize, spec.Training.EvalBatches);
            }
            catch (Data.Datasets.DatasetException e)
            {
                throw new JobFailure($"evaluation: {e.Message}");
            }
        }
        CheckpointData? state = null;
        try
        {
            // The checkpoint keeps the spec as on the submitting machine: `dtrain eval MODEL` finds the data there, and never names a path on this coordinator.
            if (checkpoint) state = TrainingCheckpoint.Capture(job.SpecOnClient with { Parallelism = null }, data.Tokenizer, data.Labels, training, engine);
        }
        catch (TrainingDivergedException e)
        {
            throw new JobFailure($"gathered from every stage: {e.Message}") { Terminal = true };
        }
        return (metrics, state);
    }

    /// <summary>
    /// What the gathered model is evaluated on: the job's data as read, or a dataset job's validation split read through
    /// its shards (only the batches evaluated), every id, record and label checked before it reaches torch; a language
    /// model's split must hold at least 2 tokens. A problem fails the job naming the dataset and the file.
    /// </summary>
    private static PreparedData Validation(JobRecord job, PreparedData data)
    {
        if (data.Dataset is not { } dataset) return data;
        JobFailure Problem(string file, string problem) => new($"evaluation: dataset {dataset.Uri}: {file}: {problem}");
        if (!TrainingTasks.For(job.Spec).HasLabels && dataset.Validation.Tokens < 2)
            throw Problem(Data.Datasets.DatasetLayout.ManifestFile, $"the validation split holds {dataset.Validation.Tokens} token(s); a language model needs at least 2 to evaluate");
        var split = new Data.Datasets.CheckedValidationSplit(dataset, data.Tokenizer.VocabSize, data.Labels.Count, Problem);
        return new PreparedData { Tokenizer = data.Tokenizer, Labels = data.Labels, Dataset = dataset, Report = data.Report, ValidationStream = split, ValidationRecords = split };
    }
}
