using System.Collections.Concurrent;
using System.Globalization;
using Dtrain.Specs;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// The queue policy: what can never run is refused at submit; otherwise jobs start in submission order, except that
/// a later job may start ahead of a head job that cannot start (backfilling, EASY-style without run-time estimates):
/// only while the head waits for workers to register — the workers that can take jobs are fewer than it needs, so
/// no job that ends would let it start — and only on idle workers. Once the workers that can take jobs are enough
/// for the head, nothing overtakes it: it starts as soon as the running jobs release enough of them, and idle
/// workers are held for it (running elastic jobs do not grow onto them).
/// Jobs going back to work from their checkpoint (restarts: training.max_restarts, or jobs that were running when the
/// coordinator stopped) start before the queue, in the order they went back; the queue is to a waiting restart as the
/// jobs behind a head are to it: while the workers that can take jobs are enough for the restart, no queued job starts
/// (the idle workers are held for it); while they are fewer (they are still registering, e.g. after a coordinator
/// restart), queued jobs may start only on the workers that were idle when it could not. So a queued job never takes
/// workers that became idle for the restart meanwhile: the order does not depend on when the workers come back.
/// <see cref="JobManager"/> owns one and calls <see cref="Schedule"/> from its loop (one thread).
/// </summary>
public sealed class JobQueue(CoordinatorOptions options, WorkerRegistry registry, ILogger log)
{
    private readonly ConcurrentQueue<JobRecord> queue = new();
    // Jobs going back to work from their checkpoint (training.max_restarts, or the coordinator restarted).
    private readonly ConcurrentQueue<JobRecord> restarts = new();
    // Jobs the scheduling loop has started but that are still in the queue (behind a head that waits).
    private readonly HashSet<string> startedFromQueue = [];

    /// <summary>Queues a job behind those already queued.</summary>
    public void Enqueue(JobRecord job) => queue.Enqueue(job);

    /// <summary>Queues a job that restarts from its checkpoint: it starts before any queued job when workers allow.</summary>
    public void EnqueueRestart(JobRecord job) => restarts.Enqueue(job);

    /// <summary>
    /// The number of workers a job runs on, checked against what the cluster can ever give it: --workers and
    /// max_workers at most Coordinator:MaxWorkersPerJob and Coordinator:MaxWorkers; a pipeline job exactly D × K
    /// workers (--workers 0 stands for that when parallelism.data is set).
    /// </summary>
    public int RunnableWorkers(JobSubmission request, JobSpec spec, string source)
    {
        var workers = JobSpecValidator.PipelineWorkers(spec, request.Workers, source);
        var limit = options.MaxWorkers > 0 ? Math.Min(options.MaxWorkers, options.MaxWorkersPerJob) : options.MaxWorkersPerJob;
        var why = options.MaxWorkers > 0 && options.MaxWorkers < options.MaxWorkersPerJob
            ? $"the cluster has at most Coordinator:MaxWorkers = {options.MaxWorkers} workers"
            : $"at most Coordinator:MaxWorkersPerJob = {options.MaxWorkersPerJob} per job";
        if (workers > limit) throw new ArgumentException($"the job needs {workers} workers, but {why}: it could never start");
        if (request.MaxWorkers > limit) throw new ArgumentException($"max_workers {request.MaxWorkers} is more than any job may have: {why}");
        if (request.MinWorkers > limit) throw new ArgumentException($"min_workers {request.MinWorkers} is more than any job may have: {why}");
        return workers;
    }

    /// <summary>
    /// One pass over the queue: reserves workers for what may start now and hands each such job with its workers to
    /// <paramref name="start"/>, and says in each waiting job's message why it waits.
    /// </summary>
    public void Schedule(Action<JobRecord, IReadOnlyList<WorkerRecord>> start)
    {
        // Restarting jobs first: they were running, and they take their minimum (a pipeline all its stages).
        JobRecord? restart = null;
        var restartNeed = 0;
        while (restarts.TryPeek(out var again))
        {
            if (again.IsFinished) { restarts.TryDequeue(out _); continue; }
            var wanted = WorkersWanted(again);
            if (registry.TryReserve(wanted, again.Id) is not { } reserved)
            {
                restart = again;
                restartNeed = Math.Max(1, wanted);
                break;
            }
            restarts.TryDequeue(out _);
            start(again, reserved);
        }
        // Workers the queue may take in this pass (null: any idle). A worker may become idle between the restart's look
        // and the queue's (a heartbeat, a release): the queue's share is fixed by one look after the restart's.
        int? budget = null;
        var restartBlocks = false;
        if (restart is not null)
        {
            var seen = registry.Capacity();
            restartBlocks = seen.Schedulable >= restartNeed;
            budget = restartBlocks ? 0 : seen.Idle;
        }
        while (queue.TryPeek(out var first) && (first.IsFinished || startedFromQueue.Contains(first.Id)))
        {
            queue.TryDequeue(out _);
            startedFromQueue.Remove(first.Id);
        }
        JobRecord? head = null;
        var headNeed = 0;
        var backfill = false;
        // Enumerating a ConcurrentQueue is a snapshot: jobs submitted meanwhile are seen on the next pass.
        foreach (var job in queue)
        {
            if (job.IsFinished || startedFromQueue.Contains(job.Id)) continue;
            var requested = job.WorkersRequested;
            var need = Math.Max(1, requested);
            // Behind a waiting restart: at most the budget ("all idle workers" is those idle at its look).
            var fits = budget is not { } left || (left > 0 && (requested == 0 || requested <= left));
            if ((head is null || backfill) && fits && registry.TryReserve(budget is { } b && requested == 0 ? b : requested, job.Id) is { } workers)
            {
                if (budget is not null) budget -= workers.Count;
                startedFromQueue.Add(job.Id);
                if (head is not null)
                {
                    log.LogInformation("job {Id} starts ahead of {Head} (backfill: {Head} waits for {Need} workers to register)", job.Id, head.Id, head.Id, headNeed);
                    job.Log($"started ahead of {head.Id}, which waits for {headNeed} workers while fewer can take jobs (backfill)");
                }
                start(job, workers);
                continue;
            }
            var capacity = registry.Capacity();
            string message;
            if (restartBlocks)
            {
                message = $"queued behind {restart!.Id}, which resumes from its checkpoint once {restartNeed} workers are idle";
            }
            else if (head is null)
            {
                head = job;
                headNeed = need;
                backfill = capacity.Schedulable < need;
                message = WaitingMessage(requested, capacity) + (backfill
                    ? $"; it starts once {need - capacity.Schedulable} more register (smaller jobs behind it may run meanwhile)"
                    : "; it starts when running jobs release them (jobs behind it wait)");
            }
            else
            {
                message = backfill
                    ? $"{WaitingMessage(requested, capacity)}; behind {head.Id}, which waits for workers to register (this job may start before it)"
                    : $"queued behind {head.Id}, which waits for {headNeed} idle workers: starting this job first would delay it";
            }
            if (job.Progress.Message != message) job.Update(p => p with { Message = message });
        }
        // Idle workers are held for a restart that only waits for running jobs, else for the head of the queue.
        registry.HoldForQueue(restartBlocks ? restartNeed : head is not null ? headNeed : restart is not null ? restartNeed : 0);
    }

    /// <summary>
    /// Workers to reserve for the job: what it asked for; a restarted data-parallel job starts with its minimum and
    /// grows as workers become idle (a pipeline needs all its stages).
    /// </summary>
    private static int WorkersWanted(JobRecord job)
    {
        var p = job.Progress;
        if (p.Restarts == 0 || job.Spec.Parallelism?.Pipeline is not null) return job.WorkersRequested;
        return Math.Max(1, p.MinWorkers);
    }

    /// <summary>"waiting for 3 idle workers: 2 can take jobs (1 idle, 1 cordoned of 3 registered)".</summary>
    private static string WaitingMessage(int requested, ClusterCapacity c)
    {
        var wanted = requested == 0 ? "at least 1 idle worker" : $"{requested.ToString(CultureInfo.InvariantCulture)} idle worker(s)";
        return $"waiting for {wanted}; {c.Idle} idle, {c.Schedulable} can take jobs" + (c.Cordoned > 0 ? $", {c.Cordoned} cordoned" : "") + $" ({c.Live} registered)";
    }
}
