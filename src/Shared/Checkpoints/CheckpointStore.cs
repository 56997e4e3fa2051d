using System.Globalization;

namespace Dtrain.Checkpoints;

/// <summary>A checkpoint file in a store directory (by name; its contents are not checked).</summary>
public sealed record CheckpointInfo(string Path, long Step, long SizeBytes);

/// <summary>A checkpoint file that <see cref="CheckpointStore.LoadLatest"/> passed over, and why.</summary>
public sealed record SkippedCheckpoint(string Path, string Reason);

/// <summary>The newest valid checkpoint, plus every newer file that was skipped because it is corrupt.</summary>
public sealed record LoadResult(string Path, CheckpointData Data, IReadOnlyList<SkippedCheckpoint> Skipped);

/// <summary>
/// A directory of checkpoint files named <c>ckpt-{step:D9}.dtck</c> (format: <see cref="CheckpointFormat"/>).
/// Saves are crash-safe: the file is written under a temporary name (<c>.ckpt-*.tmp</c>), fsynced, renamed over the
/// final name and the directory is fsynced, so a reader sees either the old set of files or the complete new one.
/// The latest checkpoint is the highest step that reads back valid. One writer per directory is assumed.
/// </summary>
public sealed class CheckpointStore
{
    private const string Prefix = "ckpt-";
    private const string Extension = ".dtck";
    private const string TempPrefix = ".ckpt-";
    private const string TempExtension = ".tmp";

    /// <param name="directory">Created on the first save when missing.</param>
    /// <param name="keepLast">How many checkpoints to keep (the one just saved included); 1 or more.</param>
    /// <param name="ownerOnly">Create the directory 0700 and checkpoints 0600 (the coordinator's); otherwise as the umask allows.</param>
    public CheckpointStore(string directory, int keepLast, bool ownerOnly = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        ArgumentOutOfRangeException.ThrowIfLessThan(keepLast, 1);
        Directory = System.IO.Path.GetFullPath(directory);
        KeepLast = keepLast;
        this.ownerOnly = ownerOnly;
    }

    private readonly bool ownerOnly;
    private const UnixFileMode OwnerDirectory = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    private void CreateDirectory()
    {
        if (ownerOnly) System.IO.Directory.CreateDirectory(Directory, OwnerDirectory);
        else System.IO.Directory.CreateDirectory(Directory);
    }

    /// <summary>Absolute path of the store directory.</summary>
    public string Directory { get; }

    public int KeepLast { get; }

    /// <summary>File name (without directory) of the checkpoint for <paramref name="step"/>.</summary>
    public static string FileName(long step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        return $"{Prefix}{step.ToString("D9", CultureInfo.InvariantCulture)}{Extension}";
    }

    /// <summary>Reads and validates a single checkpoint file, e.g. one given on a command line.</summary>
    /// <exception cref="CorruptCheckpointException">The file is not a valid checkpoint.</exception>
    public static CheckpointData ReadFile(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read,
            bufferSize: 1 << 16, FileOptions.SequentialScan);
        return CheckpointFormat.Read(stream, path);
    }

    /// <summary>
    /// Atomically writes <paramref name="data"/> as <c>ckpt-{step:D9}.dtck</c> (replacing one with the same step),
    /// then deletes checkpoints beyond <see cref="KeepLast"/> (lowest steps first; never the one just written)
    /// and stale temporary files. Returns the path of the new file.
    /// </summary>
    /// <param name="bytesWritten">Progress: running total of bytes written to the temporary file.</param>
    public string Save(CheckpointData data, Action<long>? bytesWritten = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        CreateDirectory();

        string finalPath = System.IO.Path.Combine(Directory, FileName(data.Step));
        string tempPath = System.IO.Path.Combine(Directory,
            $"{TempPrefix}{data.Step.ToString("D9", CultureInfo.InvariantCulture)}-{Guid.NewGuid():N}{TempExtension}");
        try
        {
            var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, Share = FileShare.None, BufferSize = 1 << 20 };
            if (ownerOnly) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            using (var stream = new FileStream(tempPath, options))
            {
                CheckpointFormat.Write(stream, data, bytesWritten);
                stream.Flush(flushToDisk: true);
            }
            File.Move(tempPath, finalPath, overwrite: true);
        }
        catch
        {
            TryDelete(tempPath);
            throw;
        }
        DirectorySync.Fsync(Directory);

        Prune(finalPath);
        return finalPath;
    }

    /// <summary>
    /// Makes sure checkpoints can be saved here before any work is done: creates the directory and a probe file in it.
    /// Throws <see cref="ArgumentException"/> naming <paramref name="setting"/> (e.g. "--output") and the path when the
    /// directory or its parent is an existing file, or cannot be created or written.
    /// </summary>
    public void EnsureWritable(string setting)
    {
        for (var dir = Directory; !string.IsNullOrEmpty(dir); dir = System.IO.Path.GetDirectoryName(dir))
        {
            if (File.Exists(dir))
            {
                throw new ArgumentException(dir == Directory || dir == System.IO.Path.GetDirectoryName(Directory)
                    ? $"{setting}: {dir} is an existing file; checkpoints are written into a directory ({Directory})"
                    : $"{setting}: cannot create {Directory}: {dir} is an existing file");
            }
            if (System.IO.Directory.Exists(dir)) break;
        }
        var probe = System.IO.Path.Combine(Directory, $"{TempPrefix}probe-{Guid.NewGuid():N}{TempExtension}");
        try
        {
            CreateDirectory();
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{setting}: cannot write checkpoints to {Directory}: {e.Message}", e);
        }
    }

    /// <summary>Checkpoint files in the directory, by ascending step. Temporary files are not listed.</summary>
    public IReadOnlyList<CheckpointInfo> List()
    {
        var result = new List<CheckpointInfo>();
        if (!System.IO.Directory.Exists(Directory))
            return result;
        foreach (var path in System.IO.Directory.EnumerateFiles(Directory, Prefix + "*" + Extension))
        {
            if (!TryParseStep(System.IO.Path.GetFileName(path), out long step))
                continue;
            var info = new FileInfo(path);
            if (!info.Exists)
                continue; // deleted meanwhile
            result.Add(new CheckpointInfo(path, step, info.Length));
        }
        result.Sort((a, b) => a.Step.CompareTo(b.Step));
        return result;
    }

    /// <summary>Reads and validates one checkpoint file.</summary>
    /// <exception cref="CorruptCheckpointException">The file is not a valid checkpoint.</exception>
    public CheckpointData Load(string path) => ReadFile(path);

    /// <summary>
    /// The newest checkpoint that reads back valid, or null when there is none. Newer files that are corrupt
    /// (or unreadable, or whose contents disagree with their name) are never loaded; they are listed in
    /// <see cref="LoadResult.Skipped"/> so the caller can warn about them.
    /// </summary>
    public LoadResult? LoadLatest()
    {
        var skipped = new List<SkippedCheckpoint>();
        var all = List();
        for (int i = all.Count - 1; i >= 0; i--)
        {
            var info = all[i];
            try
            {
                var data = ReadFile(info.Path);
                if (data.Step != info.Step)
                {
                    skipped.Add(new SkippedCheckpoint(info.Path,
                        $"file name says step {info.Step} but the contents are step {data.Step}"));
                    continue;
                }
                return new LoadResult(info.Path, data, skipped);
            }
            catch (CorruptCheckpointException ex)
            {
                skipped.Add(new SkippedCheckpoint(info.Path, ex.Reason));
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                skipped.Add(new SkippedCheckpoint(info.Path, $"unreadable: {ex.Message}"));
            }
        }
        return null;
    }

    private static bool TryParseStep(string fileName, out long step)
    {
        step = -1;
        if (!fileName.StartsWith(Prefix, StringComparison.Ordinal) || !fileName.EndsWith(Extension, StringComparison.Ordinal))
            return false;
        var digits = fileName.AsSpan(Prefix.Length, fileName.Length - Prefix.Length - Extension.Length);
        if (digits.Length < 9 || digits.Length > 18)
            return false;
        foreach (char c in digits)
        {
            if (c is < '0' or > '9')
                return false;
        }
        step = long.Parse(digits, NumberStyles.None, CultureInfo.InvariantCulture);
        // Only the canonical spelling counts, so two names can never mean the same step.
        return fileName == FileName(step);
    }

    private void Prune(string keep)
    {
        var others = List().Where(c => c.Path != keep).OrderByDescending(c => c.Step).ToList();
        foreach (var old in others.Skip(KeepLast - 1))
            TryDelete(old.Path);

        foreach (var temp in System.IO.Directory.EnumerateFiles(Directory, TempPrefix + "*" + TempExtension))
            TryDelete(temp);
    }

    // Deleting old files is housekeeping after a successful save: failures must not turn the save into an error.
    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }
}
