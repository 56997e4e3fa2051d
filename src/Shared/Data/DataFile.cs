using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Dtrain.Data;

/// <summary>
/// Opening and reading a data file safely: only regular files are read (a FIFO, a device, a socket or a directory is
/// refused before anything blocks on it or reads from it forever), within a size limit, in chunks that honour
/// cancellation. Also resolves a path to the physical file it names (symbolic links and <c>..</c> followed, as the
/// kernel would), for the coordinator's data-root containment check. Linux (the platform dtrain builds for).
/// </summary>
public static class DataFile
{
    /// <summary>The largest data file read by default (and the most any limit may allow): one file is decoded into one string.</summary>
    public const long DefaultMaxBytes = 1L << 30;

    /// <summary>How the default limit is named in messages.</summary>
    public const string DefaultLimitName = "the 1 GiB limit on a data file";

    /// <summary>Bytes read between two cancellation checks and progress reports.</summary>
    public const int ChunkBytes = 1 << 20;

    /// <summary>
    /// Why <paramref name="path"/> cannot be read as a data file (missing, unreadable, not a regular file, larger than
    /// <paramref name="maxBytes"/>), or null when it can. Nothing is opened: a device or FIFO is never touched.
    /// </summary>
    public static string? Problem(string path, long maxBytes, string limitName = DefaultLimitName)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Native.Statx(Native.AtFdCwd, path, 0, out var st) != 0) return OpenError(Marshal.GetLastPInvokeError());
        return TypeOrSizeProblem(st, maxBytes, limitName);
    }

    /// <summary>
    /// The whole file, read in <see cref="ChunkBytes"/> chunks; <paramref name="progress"/> is told after each chunk and
    /// <paramref name="cancel"/> is checked before each. A file that is not a regular file, or larger than
    /// <paramref name="maxBytes"/>, is refused before its content is read.
    /// </summary>
    /// <exception cref="DataFormatException">The file is missing, unreadable, not a regular file or too large.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancel"/> was cancelled while reading.</exception>
    /// <param name="open">
    /// Opens the file instead of open(2) on <paramref name="path"/> (the coordinator's <see cref="OpenWithoutLinks"/> with
    /// its checks); it throws <see cref="DataFormatException"/> for a file it will not open. What it returns is what is read.
    /// </param>
    public static byte[] ReadAllBytes(string path, long maxBytes, string limitName = DefaultLimitName, CancellationToken cancel = default, Action<DataReadProgress>? progress = null,
                                      Func<string, SafeFileHandle>? open = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxBytes, DefaultMaxBytes);
        cancel.ThrowIfCancellationRequested();
        using var handle = open is not null ? open(path) : OpenPath(path, maxBytes, limitName);
        var fd = (int)handle.DangerousGetHandle();
        if (Native.Statx(fd, "", Native.AtEmptyPath, out var st) != 0)
            throw new DataFormatException(path, 0, $"cannot read the file: {Describe(Marshal.GetLastPInvokeError())}");
        if (TypeOrSizeProblem(st, maxBytes, limitName) is { } changed) throw new DataFormatException(path, 0, changed);

        var size = checked((int)st.Size);
        var bytes = new byte[size];
        var done = 0;
        try
        {
            while (done < size)
            {
                cancel.ThrowIfCancellationRequested();
                var n = RandomAccess.Read(handle, bytes.AsSpan(done, Math.Min(ChunkBytes, size - done)), done);
                if (n == 0) break; // the file shrank while being read: keep what is there
                done += n;
                progress?.Invoke(new DataReadProgress(path, done, size));
            }
        }
        catch (IOException e)
        {
            throw new DataFormatException(path, 0, $"cannot read the file: {e.Message}");
        }
        if (done < size) Array.Resize(ref bytes, done);
        return bytes;
    }

    static SafeFileHandle OpenPath(string path, long maxBytes, string limitName)
    {
        // Look before opening: opening a FIFO blocks until a writer comes, and opening some devices has side effects.
        if (Problem(path, maxBytes, limitName) is { } problem) throw new DataFormatException(path, 0, problem);
        // O_NONBLOCK: should the path have been swapped for a FIFO since, open still returns at once; fstat refuses it.
        var fd = Native.Open(path, ReadFlags);
        if (fd < 0) throw new DataFormatException(path, 0, OpenError(Marshal.GetLastPInvokeError()));
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    const int ReadFlags = Native.ORdOnly | Native.ONonBlock | Native.ONoCtty | Native.OCloExec;

    /// <summary>
    /// Opens the file at <paramref name="physicalPath"/> (absolute, with no <c>.</c> or <c>..</c> component: a path
    /// <see cref="Locate"/> returned) for reading without following a symbolic link anywhere: from <c>/</c>, each directory
    /// is opened relative to the one before with O_NOFOLLOW (what openat2's RESOLVE_NO_SYMLINKS does, on every kernel),
    /// and its identity noted; the file itself is looked at before it is opened (a FIFO or device is never opened) and
    /// opened with O_NOFOLLOW. What the descriptor reads is the file the returned identities describe, whatever is renamed
    /// or replaced afterwards. Only regular files are opened.
    /// </summary>
    /// <exception cref="DataFormatException">No such file, a component is a symbolic link (or not a directory), the file is not a regular file, or it cannot be opened.</exception>
    public static OpenedFile OpenWithoutLinks(string physicalPath)
    {
        ArgumentNullException.ThrowIfNull(physicalPath);
        if (!physicalPath.StartsWith('/')) throw new ArgumentException($"\"{physicalPath}\" is not an absolute path", nameof(physicalPath));
        var parts = physicalPath.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0 || parts.Any(p => p is "." or "..")) throw new ArgumentException($"\"{physicalPath}\" is not a resolved path to a file", nameof(physicalPath));
        var directories = new List<FileId>(parts.Length);
        var dir = Native.Open("/", Native.OPath | Native.ODirectory | Native.OCloExec);
        if (dir < 0) throw new DataFormatException(physicalPath, 0, OpenError(Marshal.GetLastPInvokeError()));
        try
        {
            if (Native.Statx(dir, "", Native.AtEmptyPath, out var top) != 0) throw new DataFormatException(physicalPath, 0, OpenError(Marshal.GetLastPInvokeError()));
            directories.Add(top.Id);
            for (var i = 0; i < parts.Length - 1; i++)
            {
                var next = Native.OpenAt(dir, parts[i], Native.OPath | Native.ODirectory | Native.ONoFollow | Native.OCloExec);
                if (next < 0)
                {
                    var errno = Marshal.GetLastPInvokeError();
                    var at = "/" + string.Join('/', parts[..(i + 1)]);
                    if (Native.Statx(dir, parts[i], Native.AtSymlinkNoFollow, out var what) == 0 && (what.Mode & Native.SIfMt) == Native.SIfLnk)
                        throw new DataFormatException(physicalPath, 0, $"{at} on its path is a symbolic link; no symbolic link is followed when the file is opened");
                    throw new DataFormatException(physicalPath, 0, errno == Native.ENotDir ? $"{at} on its path is not a directory" : OpenError(errno));
                }
                Native.Close(dir);
                dir = next;
                if (Native.Statx(dir, "", Native.AtEmptyPath, out var st) != 0) throw new DataFormatException(physicalPath, 0, OpenError(Marshal.GetLastPInvokeError()));
                directories.Add(st.Id);
            }
            var name = parts[^1];
            // Look before opening, without following a link: a FIFO or a device is never opened.
            if (Native.Statx(dir, name, Native.AtSymlinkNoFollow, out var before) != 0) throw new DataFormatException(physicalPath, 0, OpenError(Marshal.GetLastPInvokeError()));
            if ((before.Mode & Native.SIfMt) == Native.SIfLnk)
                throw new DataFormatException(physicalPath, 0, "is a symbolic link; no symbolic link is followed when the file is opened");
            if (TypeOrSizeProblem(before, long.MaxValue, "") is { } kind) throw new DataFormatException(physicalPath, 0, kind);
            var fd = Native.OpenAt(dir, name, ReadFlags | Native.ONoFollow);
            if (fd < 0)
            {
                var errno = Marshal.GetLastPInvokeError();
                throw new DataFormatException(physicalPath, 0, errno == Native.ELoop ? "is a symbolic link; no symbolic link is followed when the file is opened" : OpenError(errno));
            }
            var handle = new SafeFileHandle(fd, ownsHandle: true);
            if (Native.Statx(fd, "", Native.AtEmptyPath, out var st2) != 0 || TypeOrSizeProblem(st2, long.MaxValue, "") is not null)
            {
                handle.Dispose();
                throw new DataFormatException(physicalPath, 0, "changed while it was opened; submit the job again");
            }
            return new OpenedFile(handle, st2.Id, st2.Links, st2.Size, directories);
        }
        finally
        {
            Native.Close(dir);
        }
    }

    /// <summary>The identity (device, inode) of the file or directory at <paramref name="path"/>, symbolic links followed; null when there is none.</summary>
    public static FileId? IdentityOf(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        return Native.Statx(Native.AtFdCwd, path, 0, out var st) == 0 ? st.Id : null;
    }

    /// <summary>
    /// The physical location <paramref name="absolutePath"/> names, with every symbolic link and <c>..</c> resolved as
    /// the kernel resolves them, and whether a file exists there. For a path that does not exist, its longest existing
    /// prefix is resolved and the rest appended; null when the rest climbs with <c>..</c> (its location is unknowable).
    /// </summary>
    public static (string? Physical, bool Exists) Locate(string absolutePath)
    {
        ArgumentNullException.ThrowIfNull(absolutePath);
        if (!Path.IsPathRooted(absolutePath)) throw new ArgumentException($"\"{absolutePath}\" is not an absolute path", nameof(absolutePath));
        if (RealPath(absolutePath) is { } whole) return (whole, true);
        var parts = absolutePath.Split('/', StringSplitOptions.RemoveEmptyEntries);
        for (var k = parts.Length - 1; k >= 0; k--)
        {
            if (RealPath("/" + string.Join('/', parts[..k])) is not { } prefix) continue;
            var rest = parts[k..].Where(p => p != ".").ToArray();
            if (rest.Contains("..")) return (null, false);
            return (Path.Join([prefix, .. rest]), false);
        }
        return (null, false);
    }

    /// <summary>realpath(3): the canonical absolute path of an existing file or directory, or null.</summary>
    /// <remarks>
    /// realpath writes into a PATH_MAX buffer this method owns. Never let realpath allocate the result (a null second
    /// argument): it would malloc through whatever allocator is preloaded (./dtrain preloads tcmalloc), and freeing that
    /// through a P/Invoke of libc's free binds glibc's own free, not the interposed one; the mismatch crashed the process.
    /// </remarks>
    public static string? RealPath(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var buffer = new byte[Native.PathMax];
        if (Native.RealPath(path, buffer) == IntPtr.Zero) return null;
        var length = Array.IndexOf(buffer, (byte)0);
        return System.Text.Encoding.UTF8.GetString(buffer, 0, length < 0 ? buffer.Length : length);
    }

    /// <summary>Whether <paramref name="physical"/> is <paramref name="root"/> or inside it (both canonical, absolute).</summary>
    public static bool IsUnder(string physical, string root)
    {
        ArgumentNullException.ThrowIfNull(physical);
        ArgumentNullException.ThrowIfNull(root);
        var r = root.TrimEnd('/');
        return physical == root || r.Length == 0 || physical.StartsWith(r + "/", StringComparison.Ordinal);
    }

    static string? TypeOrSizeProblem(in Native.StatxBuffer st, long maxBytes, string limitName)
    {
        var kind = (st.Mode & Native.SIfMt) switch
        {
            Native.SIfReg => null,
            Native.SIfDir => "a directory",
            Native.SIfIfo => "a FIFO (named pipe)",
            Native.SIfChr => "a character device",
            Native.SIfBlk => "a block device",
            Native.SIfSock => "a socket",
            var other => $"a special file (type 0x{other:x})",
        };
        if (kind is not null) return $"is {kind}, not a regular file; only regular files are read as data";
        if (st.Size > (ulong)maxBytes)
            return $"is {st.Size.ToString("N0", CultureInfo.InvariantCulture)} bytes, over {limitName} ({maxBytes.ToString("N0", CultureInfo.InvariantCulture)} bytes)";
        return null;
    }

    static string OpenError(int errno) => errno switch
    {
        Native.ENoEnt or Native.ENotDir => "file not found",
        Native.EAcces or Native.EPerm => "permission denied: the process cannot read this file",
        _ => $"cannot open the file: {Describe(errno)}",
    };

    static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    static class Native
    {
        public const int AtFdCwd = -100;
        public const int AtEmptyPath = 0x1000;
        public const int ORdOnly = 0;
        public const int ONoCtty = 0x100;
        public const int ONonBlock = 0x800;
        public const int OCloExec = 0x80000;
        public const int EPerm = 1;
        public const int ENoEnt = 2;
        public const int EAcces = 13;
        public const int ENotDir = 20;
        public const int SIfMt = 0xF000;
        public const int SIfIfo = 0x1000;
        public const int SIfChr = 0x2000;
        public const int SIfDir = 0x4000;
        public const int SIfBlk = 0x6000;
        public const int SIfReg = 0x8000;
        public const int SIfSock = 0xC000;
        public const int SIfLnk = 0xA000;
        public const int ONoFollow = 0x20000;
        public const int ODirectory = 0x10000;
        public const int OPath = 0x200000;
        public const int AtSymlinkNoFollow = 0x100;
        public const int ELoop = 40;
        const uint StatxType = 0x1, StatxNlink = 0x4, StatxIno = 0x100, StatxSize = 0x200;

        /// <summary>struct statx: the same layout on every Linux architecture (unlike struct stat).</summary>
        [StructLayout(LayoutKind.Explicit, Size = 256)]
        public struct StatxBuffer
        {
            [FieldOffset(16)] public uint Links;
            [FieldOffset(28)] public ushort Mode;
            [FieldOffset(32)] public ulong Inode;
            [FieldOffset(40)] public ulong Size;
            [FieldOffset(136)] public uint DevMajor;
            [FieldOffset(140)] public uint DevMinor;

            public readonly FileId Id => new(((ulong)DevMajor << 32) | DevMinor, Inode);
        }

        public static int Statx(int dirfd, string path, int flags, out StatxBuffer buffer) => statx(dirfd, path, flags, StatxType | StatxNlink | StatxIno | StatxSize, out buffer);

        public static int Open(string path, int flags) => open(path, flags);

        public static int OpenAt(int dirfd, string path, int flags) => openat(dirfd, path, flags);

        public static void Close(int fd) => close(fd);

        /// <summary>PATH_MAX on Linux: the size of the buffer realpath(3) writes into, terminating NUL included.</summary>
        public const int PathMax = 4096;

        public static IntPtr RealPath(string path, byte[] resolved)
        {
            if (resolved.Length < PathMax) throw new ArgumentException($"realpath needs a buffer of {PathMax} bytes", nameof(resolved));
            return realpath(path, resolved);
        }

        [DllImport("libc", SetLastError = true)]
        private static extern int statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, out StatxBuffer buffer);

        [DllImport("libc", SetLastError = true)]
        private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern int openat(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

        [DllImport("libc", SetLastError = true)]
        private static extern int close(int fd);

        [DllImport("libc", SetLastError = true)]
        private static extern IntPtr realpath([MarshalAs(UnmanagedType.LPUTF8Str)] string path, [Out] byte[] resolved);
    }
}

/// <summary>A file's identity: the device it is on and its inode number (what a hard link shares with its other names).</summary>
public readonly record struct FileId(ulong Device, ulong Inode);

/// <summary>
/// A file <see cref="DataFile.OpenWithoutLinks"/> opened: the descriptor, and what it is — its identity, its number of
/// hard links, its size, and the identity of every directory on its path from <c>/</c> (the file's own directory last).
/// </summary>
public sealed record OpenedFile(SafeFileHandle Handle, FileId Id, uint Links, ulong Size, IReadOnlyList<FileId> Directories) : IDisposable
{
    public void Dispose() => Handle.Dispose();
}

/// <summary>How far reading one data file has come.</summary>
public readonly record struct DataReadProgress(string File, long BytesRead, long TotalBytes);
