using Dtrain.Cluster;
using Dtrain.Server;
using Dtrain.Specs;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A coordinator without gRPC or processes: the real job queue (<see cref="JobManager"/>), runner, job store, registry
/// and drivers on a data directory, its workers real <see cref="Dtrain.Worker.WorkerRuntime"/>s of an
/// <see cref="InMemoryWorkerPool"/> reached through in-process handles (<see cref="JobRunner"/>'s connect). Stopping it
/// and starting another on the same data directory (with new workers, so new handles) is a coordinator restart: its
/// jobs come back from the store as they do from a killed coordinator's.
/// </summary>
public sealed class InMemoryCoordinator : IAsyncDisposable
{
    public CoordinatorOptions Options { get; }
    public WorkerRegistry Registry { get; }
    public InMemoryWorkerPool Pool { get; }
    public JobManager Jobs { get; }
    private readonly JobStore store;
    private readonly UploadStore uploads;
    private bool stopped;

    private InMemoryCoordinator(string dataDir)
    {
        // No heartbeats here: a worker is never lost for silence (WorkerTimeoutSeconds), only when the test stops it.
        Options = new CoordinatorOptions { DataDir = dataDir, HeartbeatIntervalMs = 200, WorkerTimeoutSeconds = 3600, FailureBlameGraceSeconds = 1 };
        Registry = new WorkerRegistry(Options, TimeProvider.System, NullLogger<WorkerRegistry>.Instance);
        Pool = new InMemoryWorkerPool(Options);
        Directory.CreateDirectory(dataDir);
        store = new JobStore(Path.Combine(dataDir, "jobs.db"), NullLogger.Instance);
        uploads = new UploadStore(Options, store, TimeProvider.System, NullLogger<UploadStore>.Instance);
        var runner = new JobRunner(Options, Registry, new WorkerClients(Options, CoordinatorSecurity.Create(Options)), TimeProvider.System, NullLogger<JobRunner>.Instance,
            connect: w => Pool.Connect(w));
        Jobs = new JobManager(Options, Registry, runner, new DataAccess(Options, uploads), uploads, store, TimeProvider.System, NullLogger<JobManager>.Instance);
    }

    /// <summary>A coordinator on <paramref name="dataDir"/> (its jobs taken back from the store there) with idle workers <paramref name="workers"/>.</summary>
    public static async Task<InMemoryCoordinator> StartAsync(string dataDir, params string[] workers)
    {
        var c = new InMemoryCoordinator(dataDir);
        foreach (var w in workers) c.AddWorker(w);
        await c.Jobs.StartAsync(CancellationToken.None);
        return c;
    }

    /// <summary>Starts a worker, registers it and sends its first heartbeat (it is idle); its id.</summary>
    public string AddWorker(string name)
    {
        Pool.Add(name);
        var record = Registry.Register(new WorkerRegistration(InMemoryWorkerPool.AddressOf(name), name, WorkerCapabilities.Unknown with { Cores = 1 }));
        Assert.True(Registry.Heartbeat(record.Id, record.Token));
        return record.Id;
    }

    /// <summary>The in-process handle the coordinator reaches worker <paramref name="name"/> through (for a test's faults).</summary>
    public InProcessWorkerHandle Handle(string name) => Pool.Connect(Registry.Snapshot().Single(w => w.Address == InMemoryWorkerPool.AddressOf(name)));

    /// <summary>Submits <paramref name="spec"/> with its data file <paramref name="dataFile"/> sent inline under the name the spec uses.</summary>
    public JobRecord Submit(JobSpec spec, string dataFile, int workers, string resumeJob = "") =>
        Jobs.Submit(new JobSubmission
        {
            SpecJson = JobSpecSerializer.Serialize(spec),
            Workers = workers,
            Files = new Dictionary<string, ReadOnlyMemory<byte>> { [Path.GetFileName(dataFile)] = File.ReadAllBytes(dataFile) },
            ResumeJob = resumeJob,
        });

    /// <summary>Waits for the job to end (bounded: it fails the test when the job stops making progress for <paramref name="stuck"/>).</summary>
    public static async Task<JobRecord> WaitAsync(JobRecord job, TimeSpan stuck, Func<JobRecord, bool>? done = null)
    {
        done ??= j => j.IsFinished;
        var (lastStep, lastStatus, since) = (-1L, job.Status, DateTime.UtcNow);
        while (!done(job))
        {
            if (job.Progress.Step != lastStep || job.Status != lastStatus) (lastStep, lastStatus, since) = (job.Progress.Step, job.Status, DateTime.UtcNow);
            Assert.True(DateTime.UtcNow - since < stuck, $"job {job.Id} made no progress for {stuck.TotalSeconds:F0} s: {job.Status} at step {job.Progress.Step}: {job.Progress.Message}");
            await Task.Delay(20);
        }
        return job;
    }

    /// <summary>
    /// Stops the coordinator as a SIGTERM does: running jobs are interrupted and stay running in the store (they resume
    /// from their newest checkpoint at the next start); returns once their runners have let go of their workers.
    /// </summary>
    public async Task StopAsync()
    {
        if (stopped) return;
        stopped = true;
        await Jobs.StopAsync(CancellationToken.None);
        var since = DateTime.UtcNow;
        while (Registry.Snapshot().Any(w => w.JobId != ""))
        {
            Assert.True(DateTime.UtcNow - since < TimeSpan.FromMinutes(1), "the stopped coordinator's jobs still hold workers after a minute");
            await Task.Delay(20);
        }
        store.Dispose();
        uploads.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        Jobs.Dispose();
        await Pool.DisposeAsync();
    }
}

