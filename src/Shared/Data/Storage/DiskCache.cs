using System.Security.Cryptography;
using System.Text;

namespace Dtrain.Data.Storage;

/// <summary>
/// A bounded on-disk cache of byte blobs (blocks of remote files, whole remote files), evicting the least recently
/// used entries once the total exceeds <see cref="CapacityBytes"/>. Entries are files named by the SHA-256 of their
/// key, written to a temporary name and renamed into place, so a crash never leaves a partial entry under a real name;
/// entries left by an earlier process are found again (oldest use first). Safe for concurrent use within a process.
/// </summary>
public sealed class DiskCache
{
    readonly object gate = new();
    readonly Dictionary<string, LinkedListNode<Entry>> entries = new(StringComparer.Ordinal);
    readonly LinkedList<Entry> lru = new();   // most recently used first
    long totalBytes;

    public DiskCache(string directory, long capacityBytes)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacityBytes);
        Directory = Path.GetFullPath(directory);
        CapacityBytes = capacityBytes;
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            foreach (var stale in System.IO.Directory.EnumerateFiles(Directory, "*.tmp-*")) File.Delete(stale);
            foreach (var file in new DirectoryInfo(Directory).EnumerateFiles("*.blob").OrderByDescending(f => f.LastAccessTimeUtc))
            {
                var node = lru.AddLast(new Entry(file.Name, file.Length));
                entries[file.Name] = node;
                totalBytes += file.Length;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DatasetStorageException(Directory, $"cannot use as a cache directory: {e.Message}", 1, e);
        }
        Trim(null);
    }

    public string Directory { get; }
    public long CapacityBytes { get; }

    /// <summary>Bytes held now.</summary>
    public long SizeBytes
    {
        get { lock (gate) return totalBytes; }
    }

    /// <summary>The path of <paramref name="key"/>'s entry (marking it used), or null when it is not cached.</summary>
    public string? TryGet(string key)
    {
        var name = FileName(key);
        lock (gate)
        {
            if (!entries.TryGetValue(name, out var node)) return null;
            lru.Remove(node);
            lru.AddFirst(node);
        }
        var path = Path.Combine(Directory, name);
        if (File.Exists(path)) return path;
        Forget(name);   // removed behind the cache's back
        return null;
    }

    /// <summary>
    /// Reads <paramref name="key"/>'s entry from <paramref name="offset"/> into <paramref name="destination"/>; false when
    /// it is not cached or shorter than that (then it is dropped).
    /// </summary>
    public bool TryRead(string key, long offset, Span<byte> destination)
    {
        var path = TryGet(key);
        if (path is null) return false;
        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
            var done = 0;
            while (done < destination.Length)
            {
                var n = RandomAccess.Read(handle, destination[done..], offset + done);
                if (n == 0) break;
                done += n;
            }
            if (done == destination.Length) return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Evicted or damaged between the look-up and the read: a miss.
        }
        Forget(FileName(key));
        return false;
    }

    /// <summary>Stores <paramref name="bytes"/> as <paramref name="key"/>'s entry, then evicts others beyond the capacity.</summary>
    public void Put(string key, ReadOnlySpan<byte> bytes)
    {
        var temp = TempPath();
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
                stream.Write(bytes);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
        Adopt(key, temp);
    }

    /// <summary>A new temporary file's path in the cache directory, for <see cref="Adopt"/> (cleaned at the next start if never adopted).</summary>
    public string TempPath() => Path.Combine(Directory, $"entry.tmp-{Guid.NewGuid():N}");

    /// <summary>Moves the finished file <paramref name="tempPath"/> into the cache as <paramref name="key"/>'s entry and returns its path.</summary>
    public string Adopt(string key, string tempPath)
    {
        var name = FileName(key);
        var path = Path.Combine(Directory, name);
        var size = new FileInfo(tempPath).Length;
        lock (gate)
        {
            File.Move(tempPath, path, overwrite: true);
            if (entries.Remove(name, out var old))
            {
                lru.Remove(old);
                totalBytes -= old.Value.Size;
            }
            entries[name] = lru.AddFirst(new Entry(name, size));
            totalBytes += size;
            Trim(name);
        }
        return path;
    }

    /// <summary>Drops <paramref name="key"/>'s entry (a copy that failed its check).</summary>
    public void Remove(string key)
    {
        var name = FileName(key);
        Forget(name);
        TryDelete(Path.Combine(Directory, name));
    }

    void Forget(string name)
    {
        lock (gate)
        {
            if (!entries.Remove(name, out var node)) return;
            lru.Remove(node);
            totalBytes -= node.Value.Size;
        }
    }

    /// <summary>Evicts from the least recently used end until within capacity, never <paramref name="keep"/> (the entry just added).</summary>
    void Trim(string? keep)
    {
        lock (gate)
        {
            var node = lru.Last;
            while (totalBytes > CapacityBytes && node is not null)
            {
                var previous = node.Previous;
                if (node.Value.Name != keep)
                {
                    lru.Remove(node);
                    entries.Remove(node.Value.Name);
                    totalBytes -= node.Value.Size;
                    TryDelete(Path.Combine(Directory, node.Value.Name));
                }
                node = previous;
            }
        }
    }

    static void TryDelete(string path)
    {
        try { File.Delete(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }

    static string FileName(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key))) + ".blob";

    readonly record struct Entry(string Name, long Size);
}
