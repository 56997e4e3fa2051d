using System.Collections.Concurrent;
using System.IO.MemoryMappedFiles;
using System.Security.Cryptography;

namespace Dtrain.Data.Storage;

/// <summary>
/// A dataset in a directory (local disk or storage the workers share: a compose volume, a ReadOnlyMany volume, NFS).
/// Files are memory-mapped read-only on first read and stay mapped until disposal, so the page cache serves repeated
/// reads and several processes on one host share the pages.
/// </summary>
public sealed class LocalDatasetStore : IDatasetStore
{
    readonly string directory;
    readonly ConcurrentDictionary<string, Lazy<Mapping>> mappings = new(StringComparer.Ordinal);
    int disposed;

    public LocalDatasetStore(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        Root = directory;
        this.directory = Path.GetFullPath(directory);
        if (!Directory.Exists(this.directory))
            throw new DatasetStorageException(directory, File.Exists(this.directory) ? "is a file, not a dataset directory" : "no such directory");
    }

    public string Root { get; }

    public string UriOf(string name) => Path.Combine(Root, StoreNames.Check(Root, name));

    string PathOf(string name) => Path.Combine(directory, StoreNames.Check(Root, name));

    public Task<IReadOnlyList<StoredFile>> ListAsync(CancellationToken cancellationToken = default)
    {
        var files = new List<StoredFile>();
        try
        {
            foreach (var file in new DirectoryInfo(directory).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }))
            {
                cancellationToken.ThrowIfCancellationRequested();
                files.Add(new StoredFile(Path.GetRelativePath(directory, file.FullName).Replace(Path.DirectorySeparatorChar, '/'), file.Length));
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetStorageException(Root, $"cannot list: {e.Message}", 1, e);
        }
        files.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        return Task.FromResult<IReadOnlyList<StoredFile>>(files);
    }

    public Task<long> SizeAsync(string name, CancellationToken cancellationToken = default)
    {
        var path = PathOf(name);
        var info = new FileInfo(path);
        if (!info.Exists) throw new DatasetStorageException(UriOf(name), Directory.Exists(path) ? "is a directory, not a file" : "no such file");
        return Task.FromResult(info.Length);
    }

    public Task ReadAsync(string name, long offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
        cancellationToken.ThrowIfCancellationRequested();
        var mapping = Map(name);
        if (offset + destination.Length > mapping.Size)
            throw new DatasetStorageException(UriOf(name),
                $"truncated: holds {mapping.Size} bytes, bytes {offset}..{offset + destination.Length - 1} were asked for");
        if (destination.Length > 0) mapping.Read(offset, destination.Span);
        return Task.CompletedTask;
    }

    public async Task<string> LocalFileAsync(string name, string? sha256 = null, CancellationToken cancellationToken = default)
    {
        var path = PathOf(name);
        if (!File.Exists(path)) throw new DatasetStorageException(UriOf(name), "no such file");
        if (sha256 is not null)
        {
            if (!StoreNames.IsSha256(sha256)) throw new ArgumentException($"{UriOf(name)}: \"{sha256}\" is not a SHA-256 (64 hex digits)", nameof(sha256));
            string actual;
            try
            {
                await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
                actual = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, cancellationToken));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new DatasetStorageException(UriOf(name), $"cannot read: {e.Message}", 1, e);
            }
            if (!actual.Equals(sha256, StringComparison.OrdinalIgnoreCase))
                throw new DatasetStorageException(UriOf(name), $"SHA-256 is {actual}, expected {sha256.ToLowerInvariant()} (the file changed or is corrupt)");
        }
        return path;
    }

    Mapping Map(string name)
    {
        var lazy = mappings.GetOrAdd(StoreNames.Check(Root, name), n => new Lazy<Mapping>(() => Mapping.Open(PathOf(n), UriOf(n))));
        try
        {
            return lazy.Value;
        }
        catch
        {
            mappings.TryRemove(KeyValuePair.Create(name, lazy));   // a file that appears later is mapped then
            throw;
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        foreach (var lazy in mappings.Values)
            if (lazy.IsValueCreated) lazy.Value.Dispose();
        mappings.Clear();
    }

    /// <summary>One file mapped read-only (an empty file has no mapping: nothing to read).</summary>
    sealed class Mapping : IDisposable
    {
        readonly MemoryMappedFile? file;
        readonly MemoryMappedViewAccessor? view;

        Mapping(MemoryMappedFile? file, MemoryMappedViewAccessor? view, long size)
        {
            this.file = file;
            this.view = view;
            Size = size;
        }

        public long Size { get; }

        public static Mapping Open(string path, string uri)
        {
            try
            {
                var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
                MemoryMappedFile? file = null;
                try
                {
                    var size = stream.Length;
                    if (size == 0)
                    {
                        stream.Dispose();
                        return new Mapping(null, null, 0);
                    }
                    file = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
                    return new Mapping(file, file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read), size);
                }
                catch
                {
                    file?.Dispose();
                    stream.Dispose();
                    throw;
                }
            }
            catch (FileNotFoundException e)
            {
                throw new DatasetStorageException(uri, "no such file", 1, e);
            }
            catch (DirectoryNotFoundException e)
            {
                throw new DatasetStorageException(uri, "no such file", 1, e);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new DatasetStorageException(uri, $"cannot open: {e.Message}", 1, e);
            }
        }

        public void Read(long offset, Span<byte> destination) =>
            view!.SafeMemoryMappedViewHandle.ReadSpan((ulong)(view.PointerOffset + offset), destination);

        public void Dispose()
        {
            view?.Dispose();
            file?.Dispose();
        }
    }
}
