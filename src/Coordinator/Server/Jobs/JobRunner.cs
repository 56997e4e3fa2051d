using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Specs;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// A job's life on its reserved workers: preparing → running → succeeded, failed or cancelled. Prepares the data
/// (<see cref="PreparedJob"/>), hands the steps to a driver (<see cref="DataParallelDriver"/>), turns what went wrong
/// into the message the user sees — naming the worker and the step when a worker errs, hangs, is lost or leaves —
/// and releases the workers.
/// </summary>
/// <param name="connect">How the coordinator reaches a worker (default: over gRPC, <see cref="GrpcWorkerHandle"/>; in-process handles in tests).</param>
public sealed class JobRunner(CoordinatorOptions options, WorkerRegistry registry, WorkerClients clients, TimeProvider clock, ILogger<JobRunner> log,
    Func<WorkerRecord, IWorkerHandle>? connect = null)
{
    /// <summary>Runs the job to its end; returns why it should restart from its checkpoint (training.max_restarts), or null when it ended.</summary>
    public async Task<string?> RunAsync(JobRecord job, IReadOnlyList<WorkerRecord> workers, CancellationToken stop)
    {
        // Cancelled while queued just as the scheduler took it: it does not start, its workers go back.
        if (!job.TryTransition(JobTrigger.Start, "preparing data", p => p with { Started = clock.GetUtcNow(), WorkerIds = [.. workers.Select(w => w.Id)] }, when: s => s == JobStatus.Queued))
        {
            registry.Release(job.Id);
            return null;
        }
        string? restart = null;
        // A failure caused by workers (lost, unreachable, too few) restarts the job while it has restarts left.
        bool Restarts(string message)
        {
            var done = job.Progress.Restarts;
            if (stop.IsCancellationRequested || job.Cancel.IsCancellationRequested || done >= job.Spec.Training.MaxRestarts) return false;
            restart = message;
            return true;
        }
        using var failure = CancellationTokenSource.CreateLinkedTokenSource(job.Cancel.Token, stop);
        string? lostMessage = null;
        // A data-parallel job is elastic: its fleet absorbs workers that go and admits ones that come. A pipeline's
        // stages cannot change: a worker that goes fails the job (or restarts it from its checkpoint).
        var progress = job.Progress;
        using var fleet = job.Spec.Parallelism?.Pipeline is null
            ? new JobFleet(job, workers, progress.MinWorkers, progress.MaxWorkers, registry, Connect, options, log, clock)
            : null;
        void Depart(WorkerRecord w, string message)
        {
            if (w.JobId != job.Id || fleet is not null) return;
            lock (failure)
            {
                lostMessage ??= message;
            }
            failure.Cancel();
        }
        void OnLost(WorkerRecord w) => Depart(w, $"worker {w.Id} ({w.Address}) lost: no heartbeat for {options.WorkerTimeoutSeconds:F0}s at step {job.Progress.Step}{w.LastSeenDoing(DateTimeOffset.UtcNow)}");
        // Continuing without it (elastic resize) is future work: the job fails at the step boundary the worker drained at.
        void OnLeft(WorkerRecord w, string reason) => Depart(w, $"worker {w.Id} ({w.Address}) left after step {job.Progress.Step}: {reason}");
        // An admin's drain: a pipeline's stages cannot change, so its job fails as when the worker leaves (an elastic job lets it go at a step boundary).
        void OnDrained(WorkerRecord w, string reason) => Depart(w, $"worker {w.Id} ({w.Address}) was drained after step {job.Progress.Step} ({reason}); a pipeline job cannot go on without a stage");
        registry.WorkerLost += OnLost;
        registry.WorkerLeft += OnLeft;
        registry.DrainRequested += OnDrained;
        try
        {
            await RunCoreAsync(job, workers, fleet, failure.Token).ConfigureAwait(false);
            job.Transition(JobTrigger.Succeed, "", p => p with { Finished = clock.GetUtcNow() });
            log.LogInformation("job {Id} succeeded", job.Id);
        }
        catch (Exception e) when (stop.IsCancellationRequested && !job.Cancel.IsCancellationRequested)
        {
            // The coordinator stops: the job stays running in its store and resumes from its checkpoint at the next start.
            log.LogWarning("job {Id} interrupted at step {Step} by the coordinator stopping; it resumes from its newest checkpoint when the coordinator starts again ({Message})", job.Id, job.Progress.Step, e.Message);
        }
        catch (Exception e) when (job.Cancel.IsCancellationRequested && lostMessage is null)
        {
            Finish(job, JobTrigger.Cancel, "cancelled by user" + (e is OperationCanceledException ? "" : $" ({e.Message})"));
        }
        catch (Exception e) when (lostMessage is not null)
        {
            if (!Restarts(lostMessage)) Finish(job, JobTrigger.Fail, lostMessage);
            log.LogDebug(e, "job {Id} interrupted by a lost worker", job.Id);
        }
        catch (JobFailure e) when (e.Unreachable is { } w)
        {
            // A worker that cannot be reached must not be handed the next job; if it is alive after all, its
            // next heartbeat is answered "unknown" and it registers again.
            registry.MarkLost(w.Id, e.Message);
            if (!Restarts(e.Message)) Finish(job, JobTrigger.Fail, e.Message);
        }
        catch (JobFailure e) when (e.Terminal || e.PeerFailure)
        {
            LogFullText(job, e);
            if (!Restarts(e.Message)) Finish(job, JobTrigger.Fail, e.Message);
        }
        catch (Exception e) when (e is JobFailure or DataFormatException or SpecException or ArgumentException or InvalidDataException or CorruptCheckpointException)
        {
            LogFullText(job, e);
            Finish(job, JobTrigger.Fail, e.Message);
        }
        catch (Exception e)
        {
            // Logged whole; the job's state (list, status, /api) gets the first line of an unexpected error (a native
            // one continues with libtorch's stack trace and this machine's paths) and the step it failed at.
            log.LogError(e, "job {Id} failed", job.Id);
            Finish(job, JobTrigger.Fail, $"{e.GetType().Name} at step {job.Progress.Step}: {Rpc.ErrorText.FirstLine(e.Message)}");
        }
        finally
        {
            registry.WorkerLost -= OnLost;
            registry.WorkerLeft -= OnLeft;
            registry.DrainRequested -= OnDrained;
            await JobWorkers.ReleaseAsync(fleet?.Everyone ?? workers.Select(Connect), registry, job.Id, restart is null ? job.Status.ToString() : "restarting", options.ReleaseTimeoutSeconds, log).ConfigureAwait(false);
            registry.Release(job.Id);
        }
        return restart;
    }

    /// <summary>How the coordinator reaches a worker: over gRPC, unless the runner was given another way.</summary>
    private IWorkerHandle Connect(WorkerRecord w) => connect?.Invoke(w) ?? new GrpcWorkerHandle(w, clients, options, clock);

    /// <summary>A worker's whole error text, when the job's message carries only its first line.</summary>
    private void LogFullText(JobRecord job, Exception e)
    {
        if (e is JobFailure { FullText: { } full }) log.LogError("job {Id}: {Message}; the worker's whole error:{NewLine}{Text}", job.Id, e.Message, Environment.NewLine, full);
    }

    private void Finish(JobRecord job, JobTrigger trigger, string message)
    {
        job.Transition(trigger, message, p => p with { Finished = clock.GetUtcNow() });
        log.LogWarning("job {Id} {State}: {Message}", job.Id, job.Status, message);
    }

    private async Task RunCoreAsync(JobRecord job, IReadOnlyList<WorkerRecord> workers, JobFleet? fleet, CancellationToken cancel)
    {
        // With a shared data directory, the files the job brought are prepared into a dataset its workers read themselves.
        var spec = await PreparedUploads.SpecToRunAsync(options, job, log, cancel).ConfigureAwait(false);
        var prepared = await PreparedJob.LoadAsync(job, spec, cancel).ConfigureAwait(false);
        // A dataset job's manifest and store (the coordinator opens no shard of it) are let go when the run ends.
        using var dataset = prepared.Data.Dataset;
        JobMemory.ThrowIfOver(job, prepared.Data, workers);
        if (fleet is null) await new PipelineDriver(options).RunAsync(job, prepared, new JobWorkers([.. workers.Select(Connect)], options), cancel).ConfigureAwait(false);
        else await new DataParallelDriver(options).RunAsync(job, prepared, fleet, cancel).ConfigureAwait(false);
    }
}
