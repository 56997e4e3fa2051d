using Dtrain.Data;
using Dtrain.Specs;

namespace Dtrain.Server;

/// <summary>
/// What data the coordinator reads for a job. A spec's <c>data.train</c> / <c>data.validation</c> is either a file
/// uploaded with the job, or — only if the operator configured <see cref="CoordinatorOptions.DataRoots"/> — a regular
/// file under one of those directories, named by an absolute path; symbolic links and <c>..</c> are resolved before the
/// containment check, and the job reads the resolved file. Anything else is refused at submit, naming the field, with the
/// same message whether or not the file exists. Every file must be a regular file within
/// <see cref="CoordinatorOptions.MaxDataFileBytes"/>; the readers check that again when the job prepares.
/// <para>
/// Messages about data problems quote the offending value only from files the submitter uploaded (their own data);
/// for a data-root file they name the file, line and field and the kind of problem, never its content.
/// </para>
/// </summary>
public sealed class DataAccess
{
    private readonly CoordinatorOptions options;
    private readonly UploadStore uploads;
    private readonly string[] roots;

    public DataAccess(CoordinatorOptions options, UploadStore uploads)
    {
        this.options = options;
        this.uploads = uploads;
        roots = [.. (options.DataRoots ?? []).Select(r => DataFile.RealPath(r) ?? throw new ArgumentException($"Coordinator:DataRoots: \"{r}\" is not an existing directory"))];
    }

    /// <summary>The data roots as resolved (canonical) paths.</summary>
    public IReadOnlyList<string> Roots => roots;

    /// <summary>Raised on the reading thread after each chunk of a job's data file is read (progress, tests).</summary>
    public event Action<string, DataReadProgress>? ChunkRead;

    /// <summary>
    /// Checks every data file of <paramref name="spec"/>, then claims its uploads into <paramref name="dataDir"/>; returns
    /// the spec pointing at the files the job will read. Nothing is moved unless every file is acceptable.
    /// </summary>
    /// <exception cref="SpecException">A file is not uploaded and not allowed, missing, not a regular file, or too large; the error names the field.</exception>
    public JobSpec Place(JobSpec spec, JobSubmission request, string dataDir, string source)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(request);
        if (spec.Data.Format == DataFormats.Synthetic) return spec;
        var fields = new[] { ("train", spec.Data.Train), ("validation", spec.Data.Validation) };
        // First decide where every file comes from (refusing before anything moves), then move the uploads.
        var plans = new Dictionary<string, Func<string>>(StringComparer.Ordinal);
        foreach (var (field, path) in fields)
        {
            if (path is null || plans.ContainsKey(path)) continue;
            var at = $"$.data.{field}";
            var target = Path.Combine(dataDir, $"{field}-{Path.GetFileName(path)}");
            if (request.UploadedFiles.TryGetValue(path, out var fileId))
            {
                uploads.Check(fileId, at);
                plans[path] = () => { Directory.CreateDirectory(dataDir); uploads.Claim(fileId, at, target); return target; };
            }
            else if (request.Files.TryGetValue(path, out var bytes))
            {
                if (bytes.Length > options.MaxDataFileBytes)
                    throw Refuse(source, at, $"the inline file \"{path}\" is {bytes.Length} bytes, over Coordinator:MaxDataFileBytes = {options.MaxDataFileBytes}");
                plans[path] = () => { Directory.CreateDirectory(dataDir); File.WriteAllBytes(target, bytes.Span); return target; };
            }
            else
            {
                var resolved = Resolve(path, at, source);
                plans[path] = () => resolved;
            }
        }
        var placed = plans.ToDictionary(p => p.Key, p => p.Value(), StringComparer.Ordinal);
        string? Placed(string? path) => path is null ? null : placed[path];
        return spec with { Data = spec.Data with { Train = Placed(spec.Data.Train), Validation = Placed(spec.Data.Validation) } };
    }

    /// <summary>The file a spec names without uploading it: allowed only under a data root, as a regular file within the size limit.</summary>
    private string Resolve(string path, string at, string source)
    {
        const string allow = "have the coordinator's operator allow a directory with `dtrain serve --data-root DIR` (Coordinator:DataRoots)";
        if (roots.Length == 0)
            throw Refuse(source, at, $"\"{path}\" was not uploaded with the job, and this coordinator reads no other files: upload it (`dtrain submit` uploads the spec's files), or {allow}");
        var list = string.Join(", ", roots);
        if (!Path.IsPathRooted(path))
            throw Refuse(source, at, $"\"{path}\" was not uploaded with the job; a file on the coordinator must be named by its absolute path under a data root ({list})");
        var (physical, exists) = DataFile.Locate(path);
        // Same answer whether or not the file exists: nothing outside the roots is revealed.
        if (physical is null || !roots.Any(r => DataFile.IsUnder(physical, r)))
            throw Refuse(source, at, $"\"{path}\" was not uploaded with the job and is not under the coordinator's data roots ({list}); upload it, or {allow}");
        if (!exists) throw Refuse(source, at, $"\"{path}\": no such file under the data roots");
        if (DataFile.Problem(physical, options.MaxDataFileBytes, "Coordinator:MaxDataFileBytes") is { } problem)
            throw Refuse(source, at, $"\"{path}\" {problem}");
        return physical;
    }

    /// <summary>How the job <paramref name="jobId"/> reads its data: the coordinator's size limit, quoting only from files in its own (uploaded) data directory.</summary>
    public DataReadLimits LimitsFor(string jobId, string dataDir)
    {
        var own = Path.GetFullPath(dataDir).TrimEnd('/') + "/";
        return new DataReadLimits
        {
            MaxFileBytes = options.MaxDataFileBytes,
            MaxFileBytesName = "Coordinator:MaxDataFileBytes",
            QuotesContentOf = path => Path.GetFullPath(path).StartsWith(own, StringComparison.Ordinal),
            Progress = p => ChunkRead?.Invoke(jobId, p),
        };
    }

    private static SpecException Refuse(string source, string at, string message) => new(source, [new SpecError(at, message)]);
}
