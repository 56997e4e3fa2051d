using System.Collections.Concurrent;
using System.Globalization;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>The job queue: accepts submissions (validated before any worker is touched), starts jobs in FIFO order as workers become idle, and keeps every job's record.</summary>
public sealed class JobManager(CoordinatorOptions options, WorkerRegistry registry, JobRunner runner, UploadStore uploads, TimeProvider clock, ILogger<JobManager> log) : BackgroundService
{
    private readonly ConcurrentDictionary<string, JobRecord> jobs = new();
    private readonly ConcurrentQueue<JobRecord> queue = new();
    private readonly SemaphoreSlim wake = new(0);
    // Job records live in memory, but their directories (data, checkpoints) survive a restart on the same data
    // directory: numbering continues after the highest one there, so a new job never writes into an old one's.
    private int nextId = HighestJobNumber(Path.Combine(options.DataDir, "jobs"));

    public JobRecord Submit(SubmitRequest request)
    {
        if (request.Workers < 0 || request.Workers > 4096) throw new ArgumentException($"workers {request.Workers} must be in [0, 4096] (0 = all idle workers)");
        var source = string.IsNullOrWhiteSpace(request.Source) ? "submitted spec" : request.Source;
        var spec = JobSpecSerializer.Parse(request.SpecJson, source);
        JobSpecValidator.ThrowIfNotRunnable(spec, source, onCluster: true, LargestWorker(), request.Workers > 0 ? request.Workers : Math.Max(1, registry.Snapshot().Count));
        var id = $"job-{Interlocked.Increment(ref nextId):D4}";
        var dir = Path.GetFullPath(Path.Combine(options.DataDir, "jobs", id));
        spec = StoreFiles(spec, request, uploads, Path.Combine(dir, "data"), source);
        var record = new JobRecord(id, spec with { Output = dir }, dir, request.Workers, clock.GetUtcNow());
        jobs[id] = record;
        queue.Enqueue(record);
        record.Publish(new JobEvent { State = record.Snapshot() });
        log.LogInformation("job {Id} ({Name}) queued for {Workers} worker(s)", id, spec.Name, request.Workers == 0 ? "all idle" : request.Workers.ToString(CultureInfo.InvariantCulture));
        wake.Release();
        return record;
    }

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

    public IReadOnlyList<JobRecord> List() => [.. jobs.Values.OrderBy(j => j.Id, StringComparer.Ordinal)];

    public JobRecord Cancel(string id)
    {
        var job = Get(id);
        if (job.IsFinished) return job;
        job.Cancel.Cancel();
        // A queued job is cancelled here; a running one by its runner at the next step boundary.
        if (job.Snapshot().State == JobState.Queued)
            job.Update(i => { i.State = JobState.Cancelled; i.Message = "cancelled while queued"; i.FinishedUnixMs = clock.GetUtcNow().ToUnixTimeMilliseconds(); });
        return job;
    }

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        registry.Changed += () => wake.Release();
        while (!stop.IsCancellationRequested)
        {
            await wake.WaitAsync(TimeSpan.FromSeconds(1), stop).ConfigureAwait(false);
            registry.Sweep();
            // Strict FIFO: the head of the queue waits for its workers; later jobs do not overtake it.
            while (queue.TryPeek(out var head))
            {
                if (head.IsFinished) { queue.TryDequeue(out _); continue; }
                var workers = registry.TryReserve(head.Info.WorkersRequested, head.Id);
                if (workers is null)
                {
                    var wanted = head.Info.WorkersRequested == 0 ? "at least 1" : head.Info.WorkersRequested.ToString(CultureInfo.InvariantCulture);
                    var message = $"waiting for {wanted} idle worker(s); {registry.IdleCount()} idle";
                    if (head.Snapshot().Message != message) head.Update(i => i.Message = message);
                    break;
                }
                queue.TryDequeue(out _);
                _ = Task.Run(() => runner.RunAsync(head, workers, stop), CancellationToken.None);
            }
        }
    }

    /// <summary>Writes the uploaded data files into the job directory and points the spec at them.</summary>
    private static JobSpec StoreFiles(JobSpec spec, SubmitRequest request, UploadStore uploads, string dataDir, string source)
    {
        string? Place(string? path, string field)
        {
            if (path is null) return null;
            if (request.UploadedFiles.TryGetValue(path, out var fileId))
            {
                Directory.CreateDirectory(dataDir);
                var target = Path.Combine(dataDir, $"{field}-{Path.GetFileName(path)}");
                File.Move(uploads.PathOf(fileId, $"$.data.{field}"), target, overwrite: true);
                return target;
            }
            if (request.Files.TryGetValue(path, out var bytes))
            {
                Directory.CreateDirectory(dataDir);
                var target = Path.Combine(dataDir, $"{field}-{Path.GetFileName(path)}");
                File.WriteAllBytes(target, bytes.ToByteArray());
                return target;
            }
            if (Path.IsPathRooted(path) && File.Exists(path)) return path;
            throw new SpecException(source, [new SpecError($"$.data.{field}", $"file \"{path}\" was not uploaded with the job and does not exist on the coordinator")]);
        }
        if (spec.Data.Format == DataFormats.Synthetic) return spec;
        return spec with { Data = spec.Data with { Train = Place(spec.Data.Train, "train"), Validation = Place(spec.Data.Validation, "validation") } };
    }
}
