using Dtrain.Checkpoints;
using Dtrain.Specs;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// A coordinator that starts on a data directory with a job store takes back its jobs: finished ones stay listed
/// and downloadable, queued ones stay queued in their order, and ones that were running when it stopped go back to
/// the head of the queue to restart from their newest checkpoint (the steps after it are trained again). This reads
/// them back; <see cref="JobManager"/> queues them.
/// </summary>
public sealed class JobRecovery(CoordinatorOptions options, JobStore store, DataAccess data, TimeProvider clock, ILogger log)
{
    /// <summary>The jobs taken back that go on: those that were running, and those that were queued (each in its old queue order).</summary>
    public sealed record Recovered(IReadOnlyList<JobRecord> Interrupted, IReadOnlyList<JobRecord> Waiting, int Finished);

    /// <summary>
    /// Reads every job of the store back. Each one is handed to <paramref name="adopt"/> as soon as it is restored, before
    /// anything happens to it (a job whose starting checkpoint is gone fails here, and its followers see that).
    /// </summary>
    public Recovered Load(Action<JobRecord> adopt)
    {
        var interrupted = new List<JobRecord>();
        var waiting = new List<JobRecord>();
        var finished = 0;
        foreach (var stored in store.LoadAll())
        {
            var id = stored.Job.Id;
            if (!JobManager.JobId().IsMatch(id))
            {
                log.LogError("{Store}: a job record with id \"{Id}\" (not a job id) is left out", store.Path, id);
                continue;
            }
            var dir = Path.GetFullPath(Path.Combine(options.DataDir, "jobs", id));
            JobSpec spec, submitted, onClient;
            try
            {
                spec = JobSpecSerializer.Parse(File.ReadAllText(Path.Combine(dir, "spec.json")), $"{id}/spec.json");
                submitted = JobManager.SubmittedSpecOf(dir, spec);
                onClient = JobManager.ClientSpecOf(dir, submitted);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or SpecException)
            {
                log.LogError("{Store}: job {Id} is left out: its spec cannot be read: {Message}", store.Path, id, e.Message);
                continue;
            }
            var job = JobRecord.Restore(stored, spec, dir, data.LimitsFor(id, Path.Combine(dir, "data")), submitted, onClient);
            job.Persist(store);
            adopt(job);
            if (job.IsFinished)
            {
                finished++;
                continue;
            }
            // A job that was running and has a checkpoint of its own restarts from that one: the one it resumed from is not needed.
            var ownCheckpoint = stored.Job.Status != JobStatus.Queued && stored.Job.Progress.Checkpoint != "" && File.Exists(stored.Job.Progress.Checkpoint);
            if (ReloadResume(job, stored.ResumePath) is { } problem && !ownCheckpoint)
            {
                job.Transition(JobTrigger.Fail, problem, p => p with { Finished = clock.GetUtcNow() });
                log.LogError("job {Id} failed on restart: {Message}", id, problem);
                continue;
            }
            (stored.Job.Status == JobStatus.Queued ? waiting : interrupted).Add(job);
        }
        return new Recovered(interrupted, waiting, finished);
    }

    /// <summary>The checkpoint a job that has not finished started from (it restarts from it when it has none of its own); null when fine, else why the job cannot go on.</summary>
    private string? ReloadResume(JobRecord job, string path)
    {
        if (path == "") return null;
        var from = job.Progress.ResumedFrom;
        try
        {
            job.Resume = ResumePoint.OfFile(from, path);
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or CorruptCheckpointException)
        {
            // The checkpoint of another job may have been rotated away since: that job's newest serves as well.
            if (JobManager.JobId().IsMatch(from))
            {
                try
                {
                    if (ResumePoint.OfJob(from, Path.GetFullPath(Path.Combine(options.DataDir, "jobs", from))) is { } newest)
                    {
                        job.Resume = newest;
                        return null;
                    }
                }
                catch (Exception inner) when (inner is IOException or UnauthorizedAccessException or InvalidDataException or CorruptCheckpointException)
                {
                    return $"the checkpoint it resumes from ({from}) cannot be read after the coordinator restarted: {inner.Message}";
                }
            }
            return $"the checkpoint it resumes from ({from}, {path}) cannot be read after the coordinator restarted: {e.Message}";
        }
    }
}
