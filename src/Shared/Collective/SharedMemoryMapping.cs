using System.IO.MemoryMappedFiles;
using System.Security.Cryptography;

namespace Dtrain.Collective;

/// <summary>A file in /dev/shm mapped read-write: a registered buffer (this rank's or a peer's).</summary>
internal sealed unsafe class SharedMemoryMapping : IDisposable
{
    private readonly MemoryMappedFile file;
    private readonly MemoryMappedViewAccessor view;
    private readonly string path;
    private readonly bool owned;
    private int disposed;

    private SharedMemoryMapping(MemoryMappedFile file, string path, ulong id, long bytes, bool owned)
    {
        this.file = file;
        this.path = path;
        this.owned = owned;
        Id = id;
        view = file.CreateViewAccessor(0, bytes, MemoryMappedFileAccess.ReadWrite);
        byte* pointer = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        Base = pointer + view.PointerOffset;
    }

    public ulong Id { get; }

    public string FilePath => this.path;

    public byte* Base { get; }

    private static string PathOf(string suffix, ulong id) => Path.Combine(SharedMemoryRing.Directory, $"dtrain-group-{id:x16}{suffix}");

    /// <summary>Creates a new file (mode 0600), its pages reserved up front: a full /dev/shm fails here, not later with SIGBUS.</summary>
    public static SharedMemoryMapping Create(string suffix, long bytes)
    {
        var id = BitConverter.ToUInt64(RandomNumberGenerator.GetBytes(8));
        var path = PathOf(suffix, id);
        var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.ReadWrite,
            Share = FileShare.ReadWrite | FileShare.Delete,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
            PreallocationSize = bytes,
        });
        try
        {
            stream.SetLength(bytes);
            var file = MemoryMappedFile.CreateFromFile(stream, null, bytes, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
            return new SharedMemoryMapping(file, path, id, bytes, owned: true);
        }
        catch
        {
            stream.Dispose();
            try { File.Delete(path); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Maps a peer's file by its id; its length must be <paramref name="bytes"/>.</summary>
    public static SharedMemoryMapping Open(string suffix, ulong id, long bytes)
    {
        var path = PathOf(suffix, id);
        var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        try
        {
            if (stream.Length != bytes) throw new InvalidDataException($"{path} has {stream.Length} bytes, expected {bytes}");
            var file = MemoryMappedFile.CreateFromFile(stream, null, bytes, MemoryMappedFileAccess.ReadWrite, HandleInheritability.None, leaveOpen: false);
            return new SharedMemoryMapping(file, path, id, bytes, owned: false);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    public Span<float> Floats(int count) => new(Base, count);

    /// <summary>Removes the file's name (its creator only; the mappings stay valid).</summary>
    public void DeleteFile()
    {
        if (!this.owned) return;
        try { File.Delete(this.path); } catch (IOException) { }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        this.file.Dispose();
        DeleteFile();
    }
}
