using System.Collections.Concurrent;
using System.Globalization;
using Dtrain.Checkpoints;
using Dtrain.Specs;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>The jobs: accepts submissions (validated before any worker is touched), starts jobs in submission order as workers become idle (with backfilling: <see cref="JobQueue"/>), keeps every job's record, durably (JobStore).</summary>
public sealed partial class JobManager(CoordinatorOptions options, WorkerRegistry registry, JobRunner runner, DataAccess data, UploadStore uploads, JobStore store, TimeProvider clock, ILogger<JobManager> log) : BackgroundService
{
    private readonly ConcurrentDictionary<string, JobRecord> jobs = new();
    private readonly JobStorage storage = new(options, uploads);
    private readonly JobRetention retention = new(options, clock, log);
    private readonly JobRecovery recovery = new(options, store, data, clock, log);

    /// <summary>A job was submitted or restored from the store; called before it can start, so a follower of its events misses none.</summary>
    public event Action<JobRecord>? JobAdded;
    private readonly JobQueue queue = new(options, registry, log);
    private readonly SemaphoreSlim wake = new(0);
    // Job records are kept in the store (read back by JobRecovery); numbering continues after the highest job
    // directory too, so a new job never writes into an old one's (even one the store does not know).
    private int nextId = HighestJobNumber(Path.Combine(options.DataDir, "jobs"));
    private long enqueued;

    /// <summary>Validates and queues a job; <paramref name="owner"/> is the submitting token's name ("" when auth is off).</summary>
    public JobRecord Submit(JobSubmission request, string owner = "")
    {
        if (request.Workers < 0 || request.Workers > options.MaxWorkersPerJob)
            throw new ArgumentException($"workers {request.Workers} must be in [0, {options.MaxWorkersPerJob}] (0 = all idle workers; at most Coordinator:MaxWorkersPerJob = {options.MaxWorkersPerJob} per job)");
        var source = string.IsNullOrWhiteSpace(request.Source) ? "submitted spec" : request.Source;
        if (request.MinWorkers < 0 || request.MaxWorkers < 0) throw new ArgumentException($"min_workers {request.MinWorkers} and max_workers {request.MaxWorkers} must be >= 0 (0 = default)");
        if (request.MaxWorkers > 0 && request.MinWorkers > request.MaxWorkers) throw new ArgumentException($"min_workers {request.MinWorkers} is more than max_workers {request.MaxWorkers}");
        if (request.Workers > 0 && request.MinWorkers > request.Workers) throw new ArgumentException($"min_workers {request.MinWorkers} is more than the {request.Workers} workers the job starts with");
        if (request.Workers > 0 && request.MaxWorkers > 0 && request.MaxWorkers < request.Workers) throw new ArgumentException($"max_workers {request.MaxWorkers} is less than the {request.Workers} workers the job starts with");
        if (request.ResumeJob != "" && request.ResumeUpload != "") throw new ArgumentException("resume from a job or from an uploaded checkpoint, not both");
        var resume = request.ResumeJob != "" ? ResumeOfJob(request.ResumeJob)
            : request.ResumeUpload != "" ? ResumeOfUpload(request.ResumeUpload)
            : null;
        JobSpec spec, asSubmitted, onClient;
        var ownData = false;
        if (string.IsNullOrWhiteSpace(request.SpecJson))
        {
            // `dtrain resume JOB`: that job's spec and the data files it was given.
            if (request.ResumeJob == "") throw new ArgumentException("the job spec is empty (only a resumed job may leave it out, to reuse its spec)");
            (spec, asSubmitted, onClient) = SpecOfJob(request.ResumeJob);
            retention.RequireStoredData(request.ResumeJob, JobDir(request.ResumeJob), spec);
            source = $"spec of {request.ResumeJob}";
            ownData = true;
        }
        else
        {
            spec = asSubmitted = JobSpecSerializer.Parse(request.SpecJson, source);
            // Relative data paths as they are on the submitting machine (its spec file's directory): what checkpoints keep.
            onClient = Path.IsPathRooted(request.SpecDir) ? JobSpecPaths.WithAbsoluteDataPaths(asSubmitted, request.SpecDir) : asSubmitted;
        }
        var workers = queue.RunnableWorkers(request, spec, source);
        JobSpecValidator.ThrowIfNotRunnable(spec, source, onCluster: true, LargestWorker(), workers > 0 ? workers : Math.Max(1, registry.Snapshot().Count));
        resume?.CheckCompatible(spec, source);
        resume?.Verify(spec);
        // Refused here rather than as a job that fails at once (a resume of a job that trained all its max_steps).
        if (resume is not null && spec.Training.MaxSteps > 0 && resume.State.Step >= spec.Training.MaxSteps)
            throw new ArgumentException($"{source}: the checkpoint {resume.From} is at step {resume.State.Step} and training.max_steps is {spec.Training.MaxSteps}: " +
                                        "nothing left to train (submit the spec with a larger training.max_steps and --resume)");
        storage.RequireRoom(owner, spec, request, jobs.Values);
        var id = $"job-{Interlocked.Increment(ref nextId):D4}";
        var dir = Path.GetFullPath(Path.Combine(options.DataDir, "jobs", id));
        PrivateFiles.CreateDirectory(dir);
        if (!ownData)
        {
            try
            {
                spec = StoreFiles(spec, request, Path.Combine(dir, "data"), source);
            }
            catch
            {
                // A refused submission leaves nothing behind (each one used to leave an empty job directory).
                try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
                throw;
            }
        }
        // A dataset job runs with its dataset's tokenizer options (DataAccess.PlaceDataset), wherever its spec goes.
        if (spec.Data.Dataset is not null) onClient = onClient with { Tokenizer = spec.Tokenizer };
        // Uploaded files are stored under the job's directory; messages about them name them as the spec did.
        var dataNames = JobRecord.NamesOf(asSubmitted, spec);
        if (request.ResumeUpload != "")
        {
            // The upload becomes the job's: it stays with the job (and is not counted as a pending upload).
            var kept = Path.Combine(dir, "resume-from.dtck");
            uploads.Claim(request.ResumeUpload, "resume_upload", kept);
            resume = ResumePoint.OfFile(resume!.From, kept);
        }
        spec = spec with { Output = dir };
        // The spec as it runs (data paths on this coordinator): what `dtrain resume` continues with; as it was submitted
        // (the names the user gave): what clients see; and so on the submitting machine: what workers and checkpoints get.
        PrivateFiles.WriteAllText(Path.Combine(dir, "spec.json"), JobSpecSerializer.Serialize(spec));
        PrivateFiles.WriteAllText(Path.Combine(dir, SubmittedSpecFile), JobSpecSerializer.Serialize(asSubmitted));
        PrivateFiles.WriteAllText(Path.Combine(dir, ClientSpecFile), JobSpecSerializer.Serialize(onClient));
        var record = new JobRecord(id, spec, dir, workers, clock.GetUtcNow(), owner)
        {
            Resume = resume, DataLimits = data.LimitsFor(id, Path.Combine(dir, "data")), DataNames = dataNames, SpecAsSubmitted = asSubmitted, SpecOnClient = onClient,
        };
        record.Update(p => p with
        {
            MinWorkers = request.MinWorkers,
            MaxWorkers = request.MaxWorkers,
            ResumedFrom = resume?.From ?? "",
            StartStep = resume?.State.Step ?? 0,
        }, publishState: false);
        record.QueueOrder = Interlocked.Increment(ref enqueued);
        record.StoredBytes = JobStorage.BytesUnder(dir);
        record.Persist(store);
        // Queued only once the store holds it: a coordinator restart keeps every job it said it accepted.
        if (!store.SaveNow(record)) throw new IOException($"job {id} could not be saved in {store.Path} (see the coordinator's log); it was not queued");
        jobs[id] = record;
        JobAdded?.Invoke(record);
        queue.Enqueue(record);
        record.PublishState();
        log.LogInformation("job {Id} ({Name}) queued for {Workers} worker(s){Resume}", id, spec.Name, workers == 0 ? "all idle" : workers.ToString(CultureInfo.InvariantCulture),
            resume is null ? "" : $", resuming {resume.From} at step {resume.State.Step}");
        wake.Release();
        return record;
    }

    /// <summary>The newest valid checkpoint of a job that has ended (or of an earlier coordinator's job still on disk).</summary>
    private ResumePoint ResumeOfJob(string jobId)
    {
        var dir = JobDir(jobId);
        if (jobs.TryGetValue(jobId, out var job) && !job.IsFinished)
            throw new InvalidOperationException($"job {jobId} is {job.Status.ToString().ToLowerInvariant()}: cancel it (or wait for it to end) before resuming it");
        try
        {
            return ResumePoint.OfJob(jobId, dir) ?? throw new InvalidOperationException($"job {jobId} has no checkpoint to resume from (it saves one every training.checkpoint_interval steps)");
        }
        catch (InvalidDataException e)
        {
            throw new InvalidOperationException($"job {jobId} cannot be resumed: {e.Message}", e);
        }
    }

    private ResumePoint ResumeOfUpload(string fileId)
    {
        var path = uploads.PathOf(fileId, "resume_upload");
        try
        {
            return ResumePoint.OfFile("an uploaded checkpoint", path);
        }
        catch (CorruptCheckpointException e)
        {
            throw new InvalidDataException($"the uploaded checkpoint is not valid: {e.Message.Replace(path, "upload", StringComparison.Ordinal)}", e);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException(e.Message.Replace(path, "the uploaded checkpoint", StringComparison.Ordinal), e);
        }
    }

    /// <summary>The spec a job ran with, as it was submitted and so on the submitting machine: from memory, or from its directory after a coordinator restart.</summary>
    private (JobSpec Running, JobSpec Submitted, JobSpec OnClient) SpecOfJob(string jobId)
    {
        if (jobs.TryGetValue(jobId, out var job)) return (job.Spec, job.SpecAsSubmitted, job.SpecOnClient);
        var dir = JobDir(jobId);
        var file = Path.Combine(dir, "spec.json");
        if (!File.Exists(file)) throw new KeyNotFoundException($"no job \"{jobId}\" on this coordinator");
        var running = JobSpecSerializer.Parse(File.ReadAllText(file), $"{jobId}/spec.json");
        var submitted = SubmittedSpecOf(dir, running);
        return (running, submitted, ClientSpecOf(dir, submitted));
    }

    /// <summary>The spec of a job as it was submitted, and so on the submitting machine: kept in its directory beside spec.json.</summary>
    private const string SubmittedSpecFile = "submitted-spec.json", ClientSpecFile = "client-spec.json";

    /// <summary>The spec of the job in <paramref name="dir"/> as on the submitting machine; <paramref name="submitted"/> when not kept.</summary>
    internal static JobSpec ClientSpecOf(string dir, JobSpec submitted)
    {
        var file = Path.Combine(dir, ClientSpecFile);
        return File.Exists(file) ? JobSpecSerializer.Parse(File.ReadAllText(file), $"{Path.GetFileName(dir)}/{ClientSpecFile}") : submitted;
    }

    /// <summary>
    /// The spec of the job in <paramref name="dir"/> as it was submitted; for a job of an older coordinator that did not
    /// keep it, <paramref name="running"/> with its stored data files by their file names and no output.
    /// </summary>
    internal static JobSpec SubmittedSpecOf(string dir, JobSpec running)
    {
        var file = Path.Combine(dir, SubmittedSpecFile);
        if (File.Exists(file)) return JobSpecSerializer.Parse(File.ReadAllText(file), $"{Path.GetFileName(dir)}/{SubmittedSpecFile}");
        string? Named(string? path) => path is not null && path.StartsWith(dir + Path.DirectorySeparatorChar, StringComparison.Ordinal) ? Path.GetFileName(path) : path;
        return running with { Data = running.Data with { Train = Named(running.Data.Train), Validation = Named(running.Data.Validation) }, Output = null };
    }

    /// <summary>The directory of job <paramref name="jobId"/>; only well-formed ids (no path tricks).</summary>
    private string JobDir(string jobId)
    {
        if (!JobId().IsMatch(jobId)) throw new KeyNotFoundException($"no job \"{jobId}\"; job ids look like job-0001 (`dtrain list` shows the known jobs)");
        var dir = Path.GetFullPath(Path.Combine(options.DataDir, "jobs", jobId));
        if (!jobs.ContainsKey(jobId) && !Directory.Exists(dir)) throw new KeyNotFoundException($"no job \"{jobId}\" on this coordinator");
        return dir;
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^job-[0-9]{4,9}$")]
    internal static partial System.Text.RegularExpressions.Regex JobId();

    /// <summary>The memory of the largest registered worker: a job whose replica needs more can run on none of them (no check while none is registered).</summary>
    private Training.MemoryBudget? LargestWorker() =>
        registry.Snapshot().Where(w => w.Capabilities.MemoryBytes > 0).MaxBy(w => w.Capabilities.MemoryBytes) is { } w
            ? new Training.MemoryBudget(w.Capabilities.MemoryBytes, $"the memory of the largest worker, {w.Id}", "or add workers with more memory")
            : null;

    private static int HighestJobNumber(string jobsDir) =>
        Directory.Exists(jobsDir)
            ? Directory.EnumerateDirectories(jobsDir, "job-*")
                .Select(d => int.TryParse(Path.GetFileName(d).AsSpan(4), NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n : 0)
                .DefaultIfEmpty(0).Max()
            : 0;

    public JobRecord Get(string id) =>
        jobs.TryGetValue(id, out var r) ? r : throw new KeyNotFoundException($"no job \"{id}\"; `dtrain list` shows the known jobs");

    /// <summary>
    /// Puts a job that cannot go on back in the queue to restart from its newest checkpoint (training.max_restarts):
    /// the steps after that checkpoint are undone (and trained again), the workers are reserved anew.
    /// </summary>
    /// <param name="counted">Whether the restart counts against training.max_restarts (not when the coordinator itself restarted).</param>
    public void Requeue(JobRecord job, string reason, bool counted = true)
    {
        ResumePoint? from;
        try
        {
            from = ResumePoint.OfJob(job.Id, job.Dir) ?? job.Resume;
        }
        catch (InvalidDataException e)
        {
            log.LogWarning("job {Id}: its checkpoint is unusable ({Message}); restarting from where it started", job.Id, e.Message);
            from = job.Resume;
        }
        job.Resume = from;
        var step = from?.State.Step ?? 0;
        job.Ledger.RollBack(step);
        job.QueueOrder = Interlocked.Increment(ref enqueued);
        var restart = job.Progress.Restarts + (counted ? 1 : 0);
        job.Transition(JobTrigger.Requeue, counted
                ? $"restart {restart} of {job.Spec.Training.MaxRestarts} from step {step} once workers are idle, after: {reason}"
                : $"{reason}; resuming from step {step} once workers are idle", p => p with { Restarts = restart, StartStep = step, Step = step, WorkerIds = [] });
        log.LogWarning("job {Id} restarts from step {Step}: {Reason}", job.Id, step, reason);
        queue.EnqueueRestart(job);
        wake.Release();
    }

    /// <summary>Whether the job is in this coordinator's memory (not only on its disk).</summary>
    public bool Knows(string id) => jobs.ContainsKey(id);

    public IReadOnlyList<JobRecord> List() => [.. jobs.Values.OrderBy(j => j.Id, StringComparer.Ordinal)];

    /// <summary>Bytes <paramref name="owner"/>'s jobs keep on the coordinator, as last measured (<see cref="JobStorage"/>).</summary>
    public long StoredBytesOf(string owner) => JobStorage.StoredBytesOf(owner, jobs.Values);

    /// <summary>The storage of each owner of <paramref name="listed"/>, with the quota.</summary>
    public IEnumerable<(string Owner, long Bytes, long Quota)> StorageOf(IEnumerable<JobRecord> listed) => storage.StorageOf(listed, jobs.Values);

    public JobRecord Cancel(string id)
    {
        var job = Get(id);
        if (job.IsFinished) return job;
        job.Cancel.Cancel();
        // A queued job is cancelled here; a running one by its runner at the next step boundary.
        job.TryTransition(JobTrigger.Cancel, "cancelled while queued", p => p with { Finished = clock.GetUtcNow() }, when: s => s == JobStatus.Queued);
        return job;
    }

    /// <summary>
    /// Takes back the store's jobs before the scheduling loop starts — and so before the server takes calls (hosted
    /// services start before it): a job submitted at once must not be read back from the store as a second record.
    /// </summary>
    public override Task StartAsync(CancellationToken cancellationToken)
    {
        Recover();
        return base.StartAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        registry.Changed += () => wake.Release();
        while (!stop.IsCancellationRequested)
        {
            // Half a heartbeat interval (at most 1 s) between sweeps: a silent worker is declared lost at most that long after its timeout.
            await wake.WaitAsync(TimeSpan.FromMilliseconds(Math.Min(1000, options.HeartbeatIntervalMs / 2.0)), stop).ConfigureAwait(false);
            // One pass failing (a bug, a file system error) is logged and the next pass runs: the loop that sweeps
            // workers, starts jobs and expires data must never stop while the coordinator runs.
            try
            {
                registry.Sweep();
                // In submission order, with backfilling while the head waits for workers to register (JobQueue).
                queue.Schedule((job, workers) => Start(job, workers, stop));
                foreach (var id in retention.ExpireData(jobs.Values)) storage.Changed(id);
                storage.Measure(jobs.Values);
            }
            catch (Exception e) when (e is not OperationCanceledException || !stop.IsCancellationRequested)
            {
                log.LogError(e, "the scheduling loop's pass failed; the next pass runs as usual");
            }
        }
    }

    /// <summary>Runs a job on its reserved workers; a job that asks to restart from its checkpoint goes back to the queue.</summary>
    private void Start(JobRecord job, IReadOnlyList<WorkerRecord> workers, CancellationToken stop) =>
        _ = Task.Run(async () =>
        {
            if (await runner.RunAsync(job, workers, stop).ConfigureAwait(false) is { } reason) Requeue(job, reason);
        }, CancellationToken.None);

    /// <summary>Takes back the jobs of the store (<see cref="JobRecovery"/>): the ones that were running first, then the queued ones in their order.</summary>
    private void Recover()
    {
        var back = recovery.Load(job =>
        {
            jobs[job.Id] = job;
            JobAdded?.Invoke(job);
        });
        // The jobs that were running started before any still queued: they go first.
        foreach (var job in back.Interrupted.OrderBy(j => j.QueueOrder))
            Requeue(job, "coordinator restarted", counted: false);
        foreach (var job in back.Waiting.OrderBy(j => j.QueueOrder))
        {
            job.QueueOrder = Interlocked.Increment(ref enqueued);
            store.SaveNow(job);
            queue.Enqueue(job);
        }
        if (jobs.Count > 0)
        {
            log.LogInformation("{Store}: {Count} job(s) taken back: {Running} resume from their newest checkpoint, {Queued} stay queued, {Finished} finished",
                store.Path, jobs.Count, back.Interrupted.Count, back.Waiting.Count, back.Finished);
            wake.Release();
        }
    }

    /// <summary>
    /// Checks the spec's data files and moves its uploads into the job directory, pointing the spec at the files the job
    /// reads: its uploads, or regular files under the coordinator's data roots (see <see cref="DataAccess"/>).
    /// </summary>
    private JobSpec StoreFiles(JobSpec spec, JobSubmission request, string dataDir, string source) => data.Place(spec, request, dataDir, source);
}
