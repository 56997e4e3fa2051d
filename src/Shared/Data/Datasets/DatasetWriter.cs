using System.Runtime.InteropServices;
using System.Text.Json;

namespace Dtrain.Data.Datasets;

/// <summary>
/// Makes a dataset directory safely: every file is written into a temporary directory beside the output
/// (<c>.NAME.partial-*</c>), the manifest last and fsynced, then the directory is renamed into place and its parent
/// fsynced. A crash or a full disk leaves at most a temporary directory without a manifest, never an output that looks
/// whole. An existing non-empty output is refused unless <c>force</c>; then it is replaced only once the new one is complete.
/// </summary>
public sealed class DatasetWriter : IDisposable
{
    readonly string output;
    readonly bool force;
    bool committed;

    /// <exception cref="ArgumentException">The output is a file, or a non-empty directory without <paramref name="force"/>.</exception>
    public DatasetWriter(string output, bool force)
    {
        this.output = Path.GetFullPath(output).TrimEnd('/');
        this.force = force;
        CheckOutput();
        var parent = Path.GetDirectoryName(this.output) ?? throw new ArgumentException($"{output}: cannot write a dataset at the root directory");
        System.IO.Directory.CreateDirectory(parent);
        Directory = Path.Combine(parent, $".{Path.GetFileName(this.output)}.partial-{Environment.ProcessId}-{Guid.NewGuid():N}"[..^24]);
        System.IO.Directory.CreateDirectory(Directory);
    }

    /// <summary>The temporary directory the files are written into until <see cref="Commit"/>.</summary>
    public string Directory { get; }

    void CheckOutput()
    {
        if (File.Exists(output)) throw new ArgumentException($"{output} is a file; the output of prepare is a directory");
        if (System.IO.Directory.Exists(output) && System.IO.Directory.EnumerateFileSystemEntries(output).Any() && !force)
            throw new ArgumentException($"{output} exists and is not empty; give another directory, or --force to replace it");
    }

    /// <summary>A writer for one split's shards (<paramref name="hashBehind"/>: <see cref="DatasetSplitWriter"/>).</summary>
    public DatasetSplitWriter Split(string name, int width, bool records, long shardTokens, int blockBytes = DatasetLayout.BlockBytes, bool hashBehind = false) =>
        new(Directory, name, width, records, shardTokens, blockBytes, hashBehind);

    /// <summary>Writes a small whole file (the tokenizer) into the dataset, fsynced; returns its entry.</summary>
    public DatasetFile WriteFile(string name, byte[] content)
    {
        var path = Path.Combine(Directory, name);
        using (var s = new FileStream(path, FileMode.CreateNew, FileAccess.Write))
        {
            s.Write(content);
            s.Flush(flushToDisk: true);
        }
        return new DatasetFile(name, content.Length, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(content)));
    }

    /// <summary>Writes the manifest (last, fsynced), then moves the dataset into place.</summary>
    public void Commit(DatasetManifest manifest)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        using (var s = new FileStream(Path.Combine(Directory, DatasetLayout.ManifestFile), FileMode.CreateNew, FileAccess.Write))
        {
            JsonSerializer.Serialize(s, manifest, DatasetLayout.Json);
            s.Flush(flushToDisk: true);
        }
        SyncDirectory(Directory);
        CheckOutput(); // something may have appeared there since
        string? old = null;
        if (System.IO.Directory.Exists(output))
        {
            old = Path.Combine(Path.GetDirectoryName(output)!, $".{Path.GetFileName(output)}.old-{Guid.NewGuid():N}");
            System.IO.Directory.Move(output, old);
        }
        System.IO.Directory.Move(Directory, output);
        SyncDirectory(Path.GetDirectoryName(output)!);
        committed = true;
        if (old is not null) System.IO.Directory.Delete(old, recursive: true);
    }

    /// <summary>Without <see cref="Commit"/>: the temporary directory is deleted.</summary>
    public void Dispose()
    {
        if (committed) return;
        try { System.IO.Directory.Delete(Directory, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    static void SyncDirectory(string path)
    {
        var fd = Native.Open(path, 0x10000 /* O_DIRECTORY */ | 0x80000 /* O_CLOEXEC */);
        if (fd < 0) throw new IOException($"cannot open {path} to sync it: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        try
        {
            if (Native.Fsync(fd) != 0) throw new IOException($"cannot sync {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }
        finally
        {
            Native.Close(fd);
        }
    }

    static class Native
    {
        [DllImport("libc", EntryPoint = "open", SetLastError = true)]
        public static extern int Open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", EntryPoint = "fsync", SetLastError = true)]
        public static extern int Fsync(int fd);

        [DllImport("libc", EntryPoint = "close", SetLastError = true)]
        public static extern int Close(int fd);
    }
}
