using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Microsoft.Win32.SafeHandles;

namespace Dtrain.Server;

/// <summary>
/// What data the coordinator reads for a job. A spec's <c>data.train</c> / <c>data.validation</c> is either a file
/// uploaded with the job, or — only if the operator configured <see cref="CoordinatorOptions.DataRoots"/> — a regular
/// file under one of those directories, named by an absolute path; symbolic links and <c>..</c> are resolved before the
/// containment check, and the job reads the resolved file. Anything else is refused at submit, naming the field, with the
/// same message whether or not the file exists. Every file must be a regular file within
/// <see cref="CoordinatorOptions.MaxDataFileBytes"/>; the readers check that again when the job prepares.
/// <para>
/// A data-root file is opened without following any symbolic link (<see cref="DataFile.OpenWithoutLinks"/>), at submit to
/// check it and again when the job prepares, and every check is made on the descriptor that is then read: swapping the
/// file or a directory on its path for a symbolic link while the job waits makes the job fail, never read elsewhere. A
/// file with more than one hard link is refused (its other name may be outside the root), and so is any of the
/// coordinator's own files — its TLS certificates and keys, its join token file, and anything in its data directory
/// (tokens, job store, other jobs) or its TLS directory — even when the operator put them under a root; they are
/// recognised by identity (device and inode), so a bind mount or another name does not hide them.
/// </para>
/// <para>
/// Messages about data problems quote the offending value only from files the submitter uploaded (their own data);
/// for a data-root file they name the file, line and field and the kind of problem, never its content.
/// </para>
/// </summary>
public sealed partial class DataAccess
{
    private readonly CoordinatorOptions options;
    private readonly UploadStore uploads;
    private readonly string[] roots;
    private readonly string jobsDir;

    public DataAccess(CoordinatorOptions options, UploadStore uploads)
    {
        this.options = options;
        this.uploads = uploads;
        roots = [.. (options.DataRoots ?? []).Select(r => DataFile.RealPath(r) ?? throw new ArgumentException($"Coordinator:DataRoots: \"{r}\" is not an existing directory"))];
        jobsDir = Path.GetFullPath(Path.Combine(options.DataDir, "jobs"));
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
        if (spec.Data.Dataset is { } dataset) return PlaceDataset(spec, dataset, source);
        var fields = new[] { ("train", spec.Data.Train), ("validation", spec.Data.Validation) };
        // First decide where every file comes from (refusing before anything moves), then move the uploads.
        var plans = new Dictionary<string, Func<string>>(StringComparer.Ordinal);
        // The files the job brings (uploaded or inline), with their sizes: read into memory unless they are prepared into a dataset.
        var brought = new List<(string At, string What, long Bytes)>();
        var allBrought = true;
        foreach (var (field, path) in fields)
        {
            if (path is null || plans.ContainsKey(path)) continue;
            var at = $"$.data.{field}";
            var target = Path.Combine(dataDir, $"{field}-{Path.GetFileName(path)}");
            if (request.UploadedFiles.TryGetValue(path, out var fileId))
            {
                uploads.Check(fileId, at);
                brought.Add((at, $"the uploaded file \"{path}\"", new FileInfo(uploads.PathOf(fileId, at)).Length));
                plans[path] = () => { PrivateFiles.CreateDirectory(dataDir); uploads.Claim(fileId, at, target); return target; };
            }
            else if (request.Files.TryGetValue(path, out var bytes))
            {
                brought.Add((at, $"the inline file \"{path}\"", bytes.Length));
                plans[path] = () => { PrivateFiles.CreateDirectory(dataDir); PrivateFiles.WriteAllBytes(target, bytes.Span); return target; };
            }
            else
            {
                allBrought = false;
                var resolved = Resolve(path, at, source);
                plans[path] = () => resolved;
            }
        }
        // Prepared into a dataset (PreparedUploads.Applies), a file is streamed: no size limit but the upload quotas.
        var prepared = allBrought && options.PreparesUploads && TokenizerKinds.All.Contains(spec.Tokenizer.Kind);
        if (!prepared)
            foreach (var (at, what, size) in brought.Where(b => b.Bytes > options.MaxDataFileBytes))
                throw Refuse(source, at, $"{what} is {size} bytes, over Coordinator:MaxDataFileBytes = {options.MaxDataFileBytes}, the most a job reads into memory" +
                                         (options.PreparesUploads ? " (a job that also reads a data-root file reads its files into memory)" : ""));
        var placed = plans.ToDictionary(p => p.Key, p => p.Value(), StringComparer.Ordinal);
        string? Placed(string? path) => path is null ? null : placed[path];
        return spec with { Data = spec.Data with { Train = Placed(spec.Data.Train), Validation = Placed(spec.Data.Validation) } };
    }

    /// <summary>
    /// data.dataset: <c>s3://bucket/prefix</c> (read with the coordinator's and the workers' S3 credentials), or a directory
    /// named by its absolute path under a data root (the coordinator reads its manifest there; the workers must see the same
    /// path: shared storage). Its manifest and tokenizer are read and checked (never a shard), the spec's task and tokenizer
    /// against the dataset's (<see cref="DatasetSpecs"/>); returns the spec with the dataset's tokenizer options.
    /// </summary>
    private JobSpec PlaceDataset(JobSpec spec, string dataset, string source)
    {
        const string at = "$.data.dataset";
        var uri = dataset;
        if (!Dtrain.Data.Storage.S3Location.IsS3(dataset))
        {
            const string allow = "have the coordinator's operator allow a directory with `dtrain serve --data-root DIR` (Coordinator:DataRoots)";
            if (roots.Length == 0)
                throw Refuse(source, at, $"\"{dataset}\": this coordinator reads datasets only from s3://bucket/prefix, or from directories under its data roots; {allow}");
            var list = string.Join(", ", roots);
            if (!Path.IsPathRooted(dataset))
                throw Refuse(source, at, $"\"{dataset}\": a dataset on the coordinator's storage must be named by its absolute path under a data root ({list}), which the workers see at the same path");
            var physical = DataFile.RealPath(dataset);
            if (physical is null || !roots.Any(r => DataFile.IsUnder(physical, r)))
                throw Refuse(source, at, $"\"{dataset}\" is not a directory under the coordinator's data roots ({list})");
            uri = dataset;
        }
        StoredDataset opened;
        try
        {
            opened = StoredDataset.OpenAsync(uri).GetAwaiter().GetResult();
        }
        catch (DatasetException e)
        {
            throw Refuse(source, at, e.Message);
        }
        using (opened)
        {
            DatasetSpecs.Check(spec, opened.Manifest, source);
            return DatasetSpecs.Resolve(spec, opened.Manifest);
        }
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
        try
        {
            OpenUnderRoot(physical).Dispose();
        }
        catch (DataFormatException e)
        {
            throw Refuse(source, at, $"\"{path}\" {e.Problem}");
        }
        return physical;
    }

    /// <summary>
    /// Opens a job's data file for reading: one the coordinator stored in a job's directory (an upload, an inline file),
    /// or a file under a data root as <see cref="OpenUnderRoot"/> does. Anything else — a data root removed from the
    /// configuration since the job was submitted — is refused.
    /// </summary>
    /// <exception cref="DataFormatException">The file may not be read, or cannot be opened; the problem names why.</exception>
    public SafeFileHandle Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var full = Path.GetFullPath(path);
        if (DataFile.IsUnder(full, jobsDir) && full != jobsDir)
        {
            // Written by the coordinator into its own (owner-only) directory, which may itself be reached through a
            // symbolic link (DataDir = /var/lib/dtrain -> /data/dtrain): resolved, then opened without following any.
            var own = DataFile.OpenWithoutLinks(DataFile.RealPath(full) ?? full);
            return own.Handle;
        }
        return OpenUnderRoot(full).Handle;
    }

    /// <summary>
    /// Opens <paramref name="physical"/> (a resolved path) under a data root without following any link, and checks on
    /// the open descriptor: a regular file with one hard link, not on a path through the coordinator's data or TLS
    /// directory, not one of its TLS or join token files. The caller reads (or closes) what is returned.
    /// </summary>
    /// <exception cref="DataFormatException">The file may not be read, or cannot be opened; the problem names why.</exception>
    public OpenedFile OpenUnderRoot(string physical)
    {
        ArgumentNullException.ThrowIfNull(physical);
        if (!roots.Any(r => DataFile.IsUnder(physical, r)))
            throw new DataFormatException(physical, 0, roots.Length == 0
                ? "is not under a data root: this coordinator has none configured (Coordinator:DataRoots) and reads no other files"
                : $"is not under the coordinator's data roots ({string.Join(", ", roots)})");
        // The outermost root holding the file: the directories from it down are the ones that must not be the coordinator's.
        var root = roots.Where(r => DataFile.IsUnder(physical, r)).MinBy(r => r.Length)!;
        var depth = root.Split('/', StringSplitOptions.RemoveEmptyEntries).Length;
        var file = DataFile.OpenWithoutLinks(physical);
        try
        {
            if (OwnFileProblem(file, depth) is { } problem) throw new DataFormatException(physical, 0, problem);
            return file;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>Why the opened file may not be read as a data-root file, or null.</summary>
    private string? OwnFileProblem(OpenedFile file, int rootDepth)
    {
        // Looked up on every open, so a key or token file replaced since start-up is recognised too.
        var tls = options.Tls ?? new Rpc.TlsSettings();
        // appsettings.json (read from the program's directory) may hold join tokens or the metrics token.
        var ownFiles = new[] { tls.CaKeyPath, tls.KeyPath, tls.CertPath, tls.CaPath, options.JoinTokenFile, Path.Combine(AppContext.BaseDirectory, "appsettings.json") }
            .Where(p => !string.IsNullOrWhiteSpace(p)).Select(p => DataFile.IdentityOf(p!.Trim())).OfType<FileId>();
        if (ownFiles.Contains(file.Id))
            return "is one of the coordinator's own files (a TLS certificate or key, its join token file or its appsettings.json), never read as job data";
        var ownDirs = new[] { options.DataDir, tls.Dir }
            .Where(p => !string.IsNullOrWhiteSpace(p)).Select(p => DataFile.IdentityOf(p!.Trim())).OfType<FileId>().ToHashSet();
        if (file.Directories.Skip(rootDepth).Any(ownDirs.Contains))
            return "is inside the coordinator's own data directory or TLS directory (tokens, job store, other jobs' files, keys), never read as job data";
        // The file's bytes when it is small (keys and token files are), read once for the content checks below.
        var small = SmallContent(file);
        // A copy of a key (`dtrain certs init DIR` writes DIR/ca.key beside DIR/coordinator/ca.key) is as secret as the key.
        foreach (var secret in new[] { tls.CaKeyPath, tls.KeyPath, options.JoinTokenFile }.Where(p => !string.IsNullOrWhiteSpace(p)))
            if (SameContent(file, small, secret!.Trim()))
                return "has the content of one of the coordinator's own secrets (a TLS key or its join token file), never read as job data";
        if (file.Links > 1)
            return $"has {file.Links} hard links; a data-root file is read only when it has exactly one, since another name for it may lie outside the data roots: copy the file into the root instead of linking it";
        // Any private key (the workers' bootstrap key, a client's, an SSH key) is a credential, not training data: a job
        // trained on one would hand it to the submitter in the model's vocabulary (`certs init DIR` puts all of them in DIR).
        if (small.IndexOf("PRIVATE KEY-----"u8) >= 0)
            return "holds a private key (a PEM \"PRIVATE KEY\" block), never read as job data: keep keys out of the data roots";
        // A copy of a join token (the workers' join token file), also when the coordinator has its tokens from its
        // configuration (Coordinator:JoinTokens) rather than a file: with it anyone joins as a worker.
        var holdsJoinToken = false;
        if (small.Length > 0)
            foreach (var t in JoinTokens())
                holdsJoinToken |= small.IndexOf(System.Text.Encoding.UTF8.GetBytes(t)) >= 0;
        if (holdsJoinToken)
            return "holds one of the coordinator's join tokens, never read as job data: keep join token files out of the data roots";
        // A user's token file or CLI config ({"token": "dtr_..."}) is as much a credential: it acts as that user.
        if (ApiToken().IsMatch(System.Text.Encoding.Latin1.GetString(small)))
            return $"holds a coordinator token ({Auth.TokenStore.Prefix}...), never read as job data: keep token files and CLI configurations out of the data roots";
        return null;
    }

    /// <summary>The join tokens the coordinator accepts: Coordinator:JoinTokens and the lines of its join token file.</summary>
    private IEnumerable<string> JoinTokens()
    {
        var tokens = (options.JoinTokens ?? []).Select(t => (t ?? "").Trim()).ToList();
        if (!string.IsNullOrWhiteSpace(options.JoinTokenFile))
        {
            try
            {
                tokens.AddRange(File.ReadAllLines(options.JoinTokenFile.Trim()).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        return tokens.Where(t => t.Length >= CoordinatorSecurity.MinJoinTokenLength);
    }

    [System.Text.RegularExpressions.GeneratedRegex("dtr_[A-Za-z0-9_-]{43}")]
    private static partial System.Text.RegularExpressions.Regex ApiToken();

    /// <summary>Files up to this size are read for the content checks (keys and token files are small).</summary>
    private const int LargestChecked = 1 << 20;

    /// <summary>The opened file's bytes when it is at most <see cref="LargestChecked"/>, else none.</summary>
    private static ReadOnlySpan<byte> SmallContent(OpenedFile file)
    {
        if (file.Size > LargestChecked) return [];
        var bytes = new byte[(int)file.Size];
        var done = 0;
        try
        {
            while (done < bytes.Length && RandomAccess.Read(file.Handle, bytes.AsSpan(done), done) is var n and > 0) done += n;
        }
        catch (IOException)
        {
            return [];
        }
        return bytes.AsSpan(0, done);
    }

    /// <summary>
    /// Whether the opened file, whose bytes are <paramref name="content"/> (<see cref="SmallContent"/>), holds exactly the
    /// bytes of <paramref name="secret"/> (only small files are compared: keys and tokens are).
    /// </summary>
    private static bool SameContent(OpenedFile file, ReadOnlySpan<byte> content, string secret)
    {
        try
        {
            var info = new FileInfo(secret);
            if (!info.Exists || info.Length != (long)file.Size || info.Length > LargestChecked || content.Length != info.Length) return false;
            return content.SequenceEqual(File.ReadAllBytes(secret));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
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
            Open = Open,
        };
    }

    private static SpecException Refuse(string source, string at, string message) => new(source, [new SpecError(at, message)]);
}
