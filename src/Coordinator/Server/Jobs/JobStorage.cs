using System.Globalization;
using Dtrain.Specs;

namespace Dtrain.Server;

/// <summary>
/// What each owner stores on the coordinator — the bytes under its jobs' directories: data files (until they expire,
/// <see cref="JobRetention"/>), checkpoints and records, and the datasets their files were prepared into — measured on the scheduling loop, and the per-owner quota
/// <see cref="CoordinatorOptions.MaxStoredBytesPerOwner"/> checked at submit. Pending uploads have their own limit
/// (<see cref="CoordinatorOptions.MaxPendingUploadBytes"/>) and count once a job claims them.
/// </summary>
public sealed class JobStorage(CoordinatorOptions options, UploadStore uploads)
{
    // Finished jobs measured since they finished (or since their data expired): their directories no longer change.
    private readonly HashSet<string> measured = [];

    /// <summary>Measures the jobs whose directories may have changed since last time (the active ones, and each finished one once more).</summary>
    public void Measure(IEnumerable<JobRecord> jobs)
    {
        foreach (var job in jobs)
        {
            if (job.IsFinished && measured.Contains(job.Id)) continue;
            var finished = job.IsFinished;
            job.StoredBytes = BytesOf(job);
            if (finished) measured.Add(job.Id);
        }
    }

    /// <summary>Bytes a job keeps: its directory, and the dataset its files were prepared into (<see cref="PreparedUploads"/>).</summary>
    public long BytesOf(JobRecord job) => BytesUnder(job.Dir) + (PreparedUploads.DirOf(options, job.Id) is { } dataset ? BytesUnder(dataset) : 0);

    /// <summary>A finished job's directory changed (its data files went): it is measured once more.</summary>
    public void Changed(string jobId) => measured.Remove(jobId);

    /// <summary>Bytes of the regular files under <paramref name="dir"/> (0 when it is gone).</summary>
    public static long BytesUnder(string dir)
    {
        try
        {
            if (!Directory.Exists(dir)) return 0;
            long total = 0;
            foreach (var f in new DirectoryInfo(dir).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = 0 }))
                total += f.Length;
            return total;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    /// <summary>Bytes <paramref name="owner"/>'s jobs (of <paramref name="jobs"/>) keep on the coordinator, as last measured.</summary>
    public static long StoredBytesOf(string owner, IEnumerable<JobRecord> jobs) => jobs.Where(j => j.Owner == owner).Sum(j => j.StoredBytes);

    /// <summary>The storage of each owner of <paramref name="listed"/> (counting all their <paramref name="jobs"/>), with the quota.</summary>
    public IEnumerable<(string Owner, long Bytes, long Quota)> StorageOf(IEnumerable<JobRecord> listed, IEnumerable<JobRecord> jobs) =>
        listed.Select(j => j.Owner).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal)
            .Select(o => (o, StoredBytesOf(o, jobs), options.MaxStoredBytesPerOwner));

    /// <summary>Refuses (<see cref="QuotaExceededException"/>) a submission that would take its owner over <see cref="CoordinatorOptions.MaxStoredBytesPerOwner"/>.</summary>
    public void RequireRoom(string owner, JobSpec spec, JobSubmission request, IEnumerable<JobRecord> jobs)
    {
        var quota = options.MaxStoredBytesPerOwner;
        if (quota <= 0) return;
        // What the job brings: its inline and uploaded data files and an uploaded checkpoint (an unknown upload is refused later, naming its field).
        long incoming = 0;
        foreach (var path in new[] { spec.Data.Train, spec.Data.Validation }.OfType<string>().Distinct(StringComparer.Ordinal))
        {
            if (request.Files.TryGetValue(path, out var bytes)) incoming += bytes.Length;
            else if (request.UploadedFiles.TryGetValue(path, out var fileId)) incoming += UploadBytes(fileId);
        }
        if (request.ResumeUpload != "") incoming += UploadBytes(request.ResumeUpload);
        var used = StoredBytesOf(owner, jobs);
        if (used + incoming <= quota && used < quota) return;
        var who = owner == "" ? "everyone (the coordinator's auth is off: one owner)" : $"owner \"{owner}\"";
        throw new QuotaExceededException(
            $"job refused: {who} stores {Bytes(used)} on the coordinator (jobs' data files, checkpoints and records; `dtrain list` shows each job's) " +
            $"and this job brings {Bytes(incoming)}, over the quota Coordinator:MaxStoredBytesPerOwner = {Bytes(quota)}; " +
            $"finished jobs' data files are deleted {options.JobDataRetentionMinutes.ToString("0.##", CultureInfo.InvariantCulture)} min after they end (Coordinator:JobDataRetentionMinutes), " +
            "or ask the coordinator's operator to raise the quota");
    }

    private long UploadBytes(string fileId)
    {
        try
        {
            return new FileInfo(uploads.PathOf(fileId, "upload")).Length;
        }
        catch (Exception e) when (e is ArgumentException or IOException)
        {
            return 0;
        }
    }

    /// <summary>"1.5 MB (1,500,000 bytes)".</summary>
    public static string Bytes(long n)
    {
        var exact = n.ToString("N0", CultureInfo.InvariantCulture) + " bytes";
        if (n < 1000) return exact;
        string[] units = ["kB", "MB", "GB", "TB", "PB"];
        double v = n;
        var u = -1;
        while (v >= 1000 && u < units.Length - 1) { v /= 1000; u++; }
        return $"{v.ToString("0.#", CultureInfo.InvariantCulture)} {units[u]} ({exact})";
    }
}
