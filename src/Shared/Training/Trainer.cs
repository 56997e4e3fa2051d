using System.Diagnostics;
using Dtrain.Checkpoints;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training.Tasks;

namespace Dtrain.Training;

/// <summary>Options of a local run that are not part of the job itself.</summary>
public sealed record TrainOptions
{
    /// <summary>Directory for checkpoints; defaults to the spec's output.</summary>
    public string? OutputDir { get; init; }
    /// <summary>
    /// Continue from the newest valid checkpoint in the output directory, if any (<see cref="RunDirectory.LoadLatest"/>).
    /// Without it an earlier run's checkpoints there are moved aside first (<see cref="RunDirectory.MoveEarlierRunAside"/>).
    /// </summary>
    public bool Resume { get; init; }
    /// <summary>Refuse a job whose estimated memory exceeds this before allocating anything; null = the memory available now (<see cref="MemoryBudget.Available"/>).</summary>
    public MemoryBudget? MemoryBudget { get; init; }
    /// <summary>Names the spec in errors (e.g. its file name); default: the job's name.</summary>
    public string? Source { get; init; }
    /// <summary>A deliberate non-finite loss or gradient at chosen steps (tests and drills); null in normal runs.</summary>
    public NonFiniteInjection? InjectNonFinite { get; init; }
}

/// <summary>
/// Single-process training: the engine's step in a loop with evaluation, checkpoints, time limits and clean
/// interruption. A step whose loss or gradient is not finite is skipped and counted (<see cref="NonFiniteSteps"/>),
/// exactly as on a cluster.
/// </summary>
public static class Trainer
{
    public static TrainingSummary Run(JobSpec spec, string specDir, TrainOptions options, ITrainingObserver observer, CancellationToken cancel)
    {
        var specName = options.Source ?? spec.Name;
        // Refuse what cannot finish before spending any time on it: a job too large for the memory (even with the
        // smallest vocabulary the data could give), and an output directory checkpoints cannot be written to.
        var budget = options.MemoryBudget ?? MemoryBudget.Available();
        JobSpecValidator.ThrowIfNotRunnable(spec, specName, onCluster: false, budget);
        // Checkpoints carry the spec; absolute data paths let `dtrain eval` find the data from anywhere.
        spec = JobSpecPaths.WithAbsoluteDataPaths(spec, specDir);
        var outputDir = options.OutputDir ?? JobSpecPaths.OutputDir(spec, specDir);
        var store = new CheckpointStore(Path.Combine(outputDir, "checkpoints"), spec.Training.KeepCheckpoints);
        store.EnsureWritable(options.OutputDir is null ? "$.output" : "--output");
        LoadResult? resume = null;
        if (options.Resume)
        {
            resume = RunDirectory.LoadLatest(outputDir);
            foreach (var skipped in resume?.Skipped ?? [])
                observer.OnMessage($"warning: skipping corrupt checkpoint {skipped.Path}: {skipped.Reason}");
            if (resume is null) observer.OnMessage($"no checkpoint in {store.Directory}; starting from scratch");
            // An intact checkpoint of another model (the spec changed since) is refused as such, before any data is read.
            if (resume is not null) TrainingCheckpoint.ThrowIfSpecChanged(resume.Data, resume.Path, spec, specName);
        }

        var threads = TorchThreads.Apply(spec.Training.Threads);
        var device = DeviceSelector.Resolve(spec.Training.Device, observer.OnMessage);
        var tokenizer = resume is null ? null : TrainingCheckpoint.ReadTokenizer(resume.Data, resume.Path);
        var labels = resume is null ? null : TrainingCheckpoint.ReadLabels(resume.Data, resume.Path);
        var data = PreparedData.Load(spec, specDir, tokenizer, labels);
        if (data.Report.Skipped > 0 || data.Report.Truncated > 0)
        {
            observer.OnMessage($"data: read {data.Report.Read} records, skipped {data.Report.Skipped}, truncated {data.Report.Truncated}");
            foreach (var example in data.Report.SkippedExamples) observer.OnMessage($"  skipped {example}");
        }

        var task = TrainingTasks.For(spec);
        if (resume is not null) TrainingCheckpoint.CheckModelFits(resume.Data, resume.Path, spec, data.Tokenizer.VocabSize, data.Labels.Count);
        TrainingMemory.ThrowIfOver(spec, specName, budget, data.Tokenizer.VocabSize, data.Labels.Count,
            task.LongestSequence(data));
        var source = task.TrainBatches(spec, data);
        var carries = task.CarriesState(spec);
        var plan = StepPlan.For(spec, source);
        var total = plan.TotalSteps;

        using var engine = new TrainingEngine(spec, data.Tokenizer.VocabSize, data.Labels.Count, device);
        var state = new TrainingState();
        if (resume is not null)
        {
            TrainingCheckpoint.Restore(resume.Data, resume.Path, engine, withOptimizer: true);
            state = TrainingCheckpoint.ReadState(resume.Data, resume.Path);
            observer.OnMessage($"resumed from {resume.Path} at step {state.Step}");
            // Resumed from the run directory's model.dtck, written after its checkpoints/: those are an earlier run's,
            // and must not be pruned with this run's saves nor outrank them by step.
            if (Path.GetDirectoryName(Path.GetFullPath(resume.Path)) != store.Directory && store.List().Count > 0
                && RunDirectory.MoveEarlierRunAside(outputDir, DateTime.UtcNow, checkpointsOnly: true) is { } older)
                observer.OnMessage($"{store.Directory} held an earlier run's checkpoints (older than {resume.Path}); moved them to {older}");
        }
        else if (!options.Resume && RunDirectory.MoveEarlierRunAside(outputDir, DateTime.UtcNow) is { } earlier)
        {
            // A fresh run: an earlier run's checkpoints would be taken for this run's (by eval, predict, --resume) and
            // pruned by its saves; they are kept, out of the way.
            observer.OnMessage($"{outputDir} held an earlier run's checkpoints or model; moved them to {earlier} (this run starts from scratch; use --resume to continue a run)");
        }

        observer.OnMessage($"allocator: {NativeAllocator.Describe()}");
        observer.OnStart(new TrainingPlan(spec.Name, task.Kind, total, plan.StepsPerEpoch, state.Step, Models.ModelFactory.ParameterCount(engine.Model),
            data.Tokenizer.VocabSize, data.Labels.Count, task.TrainExamples(data), device.ToString(), threads, outputDir));

        EvalMetrics Evaluate() => task.Evaluate(engine, data, spec.Training.BatchSize, spec.Training.EvalBatches);

        string? lastCheckpoint = null;
        void Save()
        {
            lastCheckpoint = store.Save(TrainingCheckpoint.Capture(spec, data.Tokenizer, data.Labels, state, engine));
            observer.OnCheckpoint(state.Step, lastCheckpoint);
        }

        var nonFinite = new NonFiniteSteps(spec, state.NonFiniteStreak);
        var clock = Stopwatch.StartNew();
        var startElapsed = state.ElapsedSeconds;
        var runStartStep = state.Step;
        long runSamples = 0;
        var stopReason = "finished";
        // A resume from a checkpoint at or past the run's last step: nothing runs (said, rather than a 0.0 samples/s run).
        if (state.Step >= total && runStartStep > 0)
        {
            stopReason = "nothing left to train";
            observer.OnMessage($"nothing left to train: the checkpoint is at step {state.Step} and this run has {total} steps (raise training.max_steps or training.epochs, or give --max-steps)");
        }
        var maxSeconds = spec.Training.MaxMinutes * 60;
        while (state.Step < total)
        {
            if (cancel.IsCancellationRequested) { stopReason = "interrupted"; break; }
            if (maxSeconds > 0 && startElapsed + clock.Elapsed.TotalSeconds >= maxSeconds) { stopReason = $"time limit of {spec.Training.MaxMinutes} min reached"; break; }

            var position = plan.PositionOf(state.Step);
            if (carries && position.StepInEpoch == 0) engine.ResetState();
            var lr = plan.Schedule.At(state.Step);
            double loss;
            AppliedStep applied;
            int rows;
            using (var batch = source.Get(position, 0, source.RowsAt(position))!)
            {
                var inject = options.InjectNonFinite?.At(state.Step);
                var stats = engine.ComputeGradients(batch, carries, inject);
                applied = engine.ApplyGradients(stats.Count, lr, stats.LossSum);
                if (inject == NonFiniteInjection.Parameters) NonFiniteInjection.PoisonParameters(engine.Parameters);
                loss = stats.LossSum / stats.Count;
                rows = batch.Rows;
            }
            var norm = applied.GradNorm;
            // A skipped step still counts: the schedule and the data order move on, as on a cluster.
            if (nonFinite.Record(state.Step + 1, applied.Describe(loss)) is { } skipped)
            {
                observer.OnMessage(skipped.Line);
                if (skipped.Failure is { } failure) throw new TrainingDivergedException(failure);
            }
            runSamples += rows;
            var elapsed = TimeSpan.FromSeconds(startElapsed + clock.Elapsed.TotalSeconds);
            state = state with { Step = state.Step + 1, SamplesSeen = state.SamplesSeen + rows, ElapsedSeconds = elapsed.TotalSeconds, LastLr = lr, NonFiniteStreak = nonFinite.Consecutive };
            var perStep = clock.Elapsed.TotalSeconds / (state.Step - runStartStep);
            var eta = TimeSpan.FromSeconds(perStep * (total - state.Step));
            if (maxSeconds > 0) eta = TimeSpan.FromSeconds(Math.Min(eta.TotalSeconds, Math.Max(0, maxSeconds - elapsed.TotalSeconds)));
            observer.OnStep(new StepReport(state.Step, total, position.Epoch, loss, lr, norm, runSamples / clock.Elapsed.TotalSeconds, elapsed, eta, applied.Skipped));

            // The end's evaluation and checkpoint follow the loop (also after an interruption or the time limit).
            if (state.Step < total && plan.EvaluatesAfter(state.Step))
            {
                var m = Evaluate();
                state = state with { LastEval = m };
                observer.OnEvaluation(state.Step, m);
            }
            if (state.Step < total && plan.CheckpointsAfter(state.Step)) Save();
        }

        var final = Evaluate();
        state = state with { LastEval = final };
        observer.OnEvaluation(state.Step, final);
        Save();
        var seconds = clock.Elapsed.TotalSeconds;
        return new TrainingSummary(state.Step, TimeSpan.FromSeconds(state.ElapsedSeconds), seconds > 0 ? runSamples / seconds : 0, final, lastCheckpoint, stopReason);
    }
}
