using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>
/// With <see cref="CoordinatorOptions.SharedDataDir"/>: the data files a job brought (uploaded or inline, stored in
/// DATA_DIR/jobs/JOB/data) are prepared when the job starts — streaming, on the job's task, never one string — into a
/// dataset in SharedDataDir/JOB (<see cref="DatasetPreparer"/> with the spec's options, so the ids are the in-memory
/// path's), and the job trains from it as a data.dataset job. The dataset is written beside its place and renamed there
/// once its manifest is written (<see cref="DatasetWriter"/>), so a dataset in SharedDataDir/JOB is whole; one that does
/// not match the job's files (of another coordinator's job of the same id) is prepared again, and what an interrupted
/// preparation left (SharedDataDir/.JOB.partial-*) is removed before preparing. A data-parallel and a pipeline job alike;
/// a job reading a data-root file and a synthetic one read their data into memory as before.
/// </summary>
public static class PreparedUploads
{
    /// <summary>Where the dataset of <paramref name="jobId"/> is prepared; null without a <see cref="CoordinatorOptions.SharedDataDir"/>.</summary>
    public static string? DirOf(CoordinatorOptions options, string jobId) =>
        options.PreparesUploads ? Path.Combine(Path.GetFullPath(options.SharedDataDir), jobId) : null;

    /// <summary>
    /// Whether the job's data is prepared into a dataset: a shared directory is configured and
    /// it reads files (no dataset, not synthetic) all of which were brought with it (stored under <paramref name="jobDir"/>/data,
    /// or for `dtrain resume JOB` under that job's).
    /// </summary>
    public static bool Applies(CoordinatorOptions options, JobSpec spec, string jobDir)
    {
        if (!options.PreparesUploads) return false;
        var d = spec.Data;
        if (d.Dataset is not null || d.Format == DataFormats.Synthetic || d.Train is null) return false;
        if (!TokenizerKinds.All.Contains(spec.Tokenizer.Kind)) return false;
        // DATA_DIR/jobs/JOB/data/FILE: this job's, or (`dtrain resume JOB`) the job's it continues.
        var jobs = Path.GetDirectoryName(Path.GetFullPath(jobDir)) + Path.DirectorySeparatorChar;
        static bool Stored(string path, string jobs) =>
            path.StartsWith(jobs, StringComparison.Ordinal) && path[jobs.Length..].Split(Path.DirectorySeparatorChar) is [_, "data", _];
        return new[] { d.Train, d.Validation }.OfType<string>().All(p => Stored(Path.GetFullPath(p), jobs));
    }

    /// <summary>The options of <see cref="DatasetPreparer"/> that make the ids the in-memory path makes of <paramref name="spec"/>'s files.</summary>
    public static PrepareOptions OptionsFor(JobSpec spec, string output)
    {
        var d = spec.Data;
        // As the in-memory path reads them: in data.format, whatever the extension, never decompressed.
        SourceFile Source(string path, string split) => new(Path.GetFullPath(path), split, d.Format, SourceFiles.None);
        return new PrepareOptions
        {
            Train = [Source(d.Train!, DatasetLayout.TrainSplit)],
            Validation = d.Validation is { } v ? [Source(v, DatasetLayout.ValidationSplit)] : [],
            Output = output,
            Force = true,
            Task = spec.Task,
            TextField = d.TextField,
            LabelField = d.LabelField,
            MaxLength = d.MaxLength,
            Overlength = d.Overlength,
            OnError = d.OnError,
            ValidationFraction = d.ValidationFraction,
            Seed = spec.Training.Seed,
            Tokenizer = spec.Tokenizer,
            Threads = Math.Max(1, Environment.ProcessorCount),
        };
    }

    /// <summary>
    /// The spec the job runs with: <paramref name="job"/>'s own when its data is not prepared (<see cref="Applies"/>), else
    /// its spec reading the dataset it was prepared into (prepared now unless a whole one of its files is there). A
    /// resumed job whose checkpoint has another vocabulary or labels than its data's reads its files into memory, where
    /// they are encoded with the checkpoint's.
    /// </summary>
    /// <exception cref="DataFormatException">Bad data: the message names the file (as stored) and the line.</exception>
    /// <exception cref="JobFailure">The dataset could not be written (a full disk, no permission) or read back.</exception>
    public static async Task<JobSpec> SpecToRunAsync(CoordinatorOptions options, JobRecord job, ILogger log, CancellationToken cancel)
    {
        var spec = job.Spec;
        if (!Applies(options, spec, job.Dir)) return spec;
        var dir = DirOf(options, job.Id)!;
        var prepare = OptionsFor(spec, dir);
        var manifest = await Task.Run(() => Existing(prepare, dir, log, job.Id), cancel).ConfigureAwait(false);
        if (manifest is null)
        {
            job.Log($"data: preparing the job's files into the dataset {dir}");
            manifest = await Task.Run(() => Prepare(prepare, dir, log, job.Id, cancel), cancel).ConfigureAwait(false);
        }
        if (job.Resume is { } resume)
        {
            using var opened = await Open(dir, cancel).ConfigureAwait(false);
            if (!opened.Tokenizer.ToState().Tokens.SequenceEqual(resume.Tokenizer.ToState().Tokens) || !opened.Labels.Names.SequenceEqual(resume.Labels.Names))
            {
                job.Log("data: the checkpoint the job resumes from has another vocabulary or labels than its data's: its files are read into memory and encoded with the checkpoint's");
                return spec;
            }
        }
        if (manifest.Report.Skipped > 0 || manifest.Report.Truncated > 0)
            job.Log($"data: read {manifest.Report.Read} records, skipped {manifest.Report.Skipped}, truncated {manifest.Report.Truncated}");
        return spec with { Data = spec.Data with { Dataset = dir } };
    }

    /// <summary>The manifest of a whole dataset in <paramref name="dir"/> prepared from exactly the job's files and options; null when there is none.</summary>
    private static DatasetManifest? Existing(PrepareOptions prepare, string dir, ILogger log, string jobId)
    {
        if (!Directory.Exists(dir)) return null;
        try
        {
            using var opened = Open(dir, CancellationToken.None).GetAwaiter().GetResult();
            var m = opened.Manifest;
            var sources = prepare.Train.Concat(prepare.Validation).Select(s => (s.Path, s.Split, s.Format, new FileInfo(s.Path).Length));
            if (m.Sources.Select(s => (s.Path, s.Split, s.Format, s.Bytes)).SequenceEqual(sources)
                && m.Settings.Task == prepare.Task && m.Settings.Tokenizer == prepare.Tokenizer && m.Settings.Seed == prepare.Seed)
                return m;
            log.LogWarning("job {Id}: the dataset {Dir} was not prepared from the job's files; preparing it again", jobId, dir);
        }
        catch (JobFailure e)
        {
            log.LogWarning("job {Id}: {Message}; preparing it again", jobId, e.Message);
        }
        catch (IOException e)
        {
            log.LogWarning("job {Id}: the dataset {Dir} cannot be read ({Message}); preparing it again", jobId, dir, e.Message);
        }
        return null;
    }

    private static DatasetManifest Prepare(PrepareOptions prepare, string dir, ILogger log, string jobId, CancellationToken cancel)
    {
        try
        {
            RemoveLeftovers(dir);
            return DatasetPreparer.Prepare(prepare, line => log.LogInformation("job {Id}: {Line}", jobId, line), cancel);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new JobFailure($"preparing the job's data into the dataset {dir} failed: {e.Message} (Coordinator:SharedDataDir); nothing of it is used");
        }
    }

    private static async Task<StoredDataset> Open(string dir, CancellationToken cancel)
    {
        try
        {
            return await StoredDataset.OpenAsync(dir, cancel: cancel).ConfigureAwait(false);
        }
        catch (DatasetException e)
        {
            throw new JobFailure(e.Message);
        }
    }

    /// <summary>Deletes what an interrupted preparation of <paramref name="dir"/> left beside it (SharedDataDir/.JOB.partial-*, .JOB.old-*).</summary>
    private static void RemoveLeftovers(string dir)
    {
        var parent = Path.GetDirectoryName(dir)!;
        if (!Directory.Exists(parent)) return;
        var name = Path.GetFileName(dir);
        foreach (var pattern in new[] { $".{name}.partial-*", $".{name}.old-*" })
            foreach (var leftover in Directory.EnumerateDirectories(parent, pattern))
                Directory.Delete(leftover, recursive: true);
    }

    /// <summary>Deletes the dataset of <paramref name="jobId"/> and anything an interrupted preparation left; returns the bytes freed (0 when there was none).</summary>
    public static long Remove(CoordinatorOptions options, string jobId)
    {
        if (DirOf(options, jobId) is not { } dir) return 0;
        long bytes = 0;
        if (Directory.Exists(dir))
        {
            bytes = JobStorage.BytesUnder(dir);
            Directory.Delete(dir, recursive: true);
        }
        RemoveLeftovers(dir);
        return bytes;
    }
}
