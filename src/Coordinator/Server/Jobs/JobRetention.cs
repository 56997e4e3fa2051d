using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// A job's data files stored with it (what was uploaded or sent inline with it: DATA_DIR/jobs/JOB/data), and the dataset
/// they were prepared into (SharedDataDir/JOB, <see cref="PreparedUploads"/>), go
/// <see cref="CoordinatorOptions.JobDataRetentionMinutes"/> after the job ended, on the coordinator's clock, across
/// restarts (the end time is in the job store). The job's record, spec and checkpoints stay: it is still listed and
/// downloadable, and `dtrain submit JOB.json --resume JOB` continues it with its data sent again.
/// </summary>
public sealed class JobRetention(CoordinatorOptions options, TimeProvider clock, ILogger log)
{
    // Jobs whose data directory is gone (deleted here, or never had one): not looked at again.
    private readonly HashSet<string> expired = [];

    /// <summary>The data directory of a job (its uploaded and inline files).</summary>
    public static string DataDirOf(JobRecord job) => Path.Combine(job.Dir, "data");

    /// <summary>Deletes the data of every job of <paramref name="jobs"/> that ended more than the retention ago; returns the jobs whose data went.</summary>
    public IReadOnlyList<string> ExpireData(IEnumerable<JobRecord> jobs)
    {
        var now = clock.GetUtcNow();
        var retention = TimeSpan.FromMinutes(options.JobDataRetentionMinutes);
        var deleted = new List<string>();
        foreach (var job in jobs)
        {
            var (status, progress) = job.Read();
            if (!JobLifecycle.IsFinished(status) || expired.Contains(job.Id)) continue;
            if (progress.Finished is not { } finished || now - finished < retention) continue;
            var dir = DataDirOf(job);
            try
            {
                var dataset = PreparedUploads.DirOf(options, job.Id);
                if (Directory.Exists(dir) || (dataset is not null && Directory.Exists(dataset)))
                {
                    var bytes = JobStorage.BytesUnder(dir);
                    if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
                    // The dataset its files were prepared into goes with them.
                    bytes += PreparedUploads.Remove(options, job.Id);
                    deleted.Add(job.Id);
                    log.LogInformation("job {Id}: its data files ({Bytes} bytes) deleted {Minutes} min after it ended (Coordinator:JobDataRetentionMinutes)", job.Id, bytes, options.JobDataRetentionMinutes);
                }
                expired.Add(job.Id);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                log.LogWarning("job {Id}: could not delete its data files in {Dir}: {Message}", job.Id, dir, e.Message);
                expired.Add(job.Id);
            }
        }
        return deleted;
    }

    /// <summary>
    /// `dtrain resume JOB` reuses the job's stored data files (under <paramref name="jobDir"/>): refused, saying what to
    /// do, once they are gone.
    /// </summary>
    public void RequireStoredData(string jobId, string jobDir, Specs.JobSpec spec)
    {
        var own = Path.Combine(jobDir, "data") + Path.DirectorySeparatorChar;
        foreach (var path in new[] { spec.Data.Train, spec.Data.Validation })
        {
            if (path is null || !path.StartsWith(own, StringComparison.Ordinal) || File.Exists(path)) continue;
            throw new InvalidOperationException($"job {jobId}'s data files were deleted {options.JobDataRetentionMinutes:0.##} min after it ended (Coordinator:JobDataRetentionMinutes): " +
                                                $"send them again with its spec: `dtrain submit JOB.json --resume {jobId}`");
        }
    }
}
