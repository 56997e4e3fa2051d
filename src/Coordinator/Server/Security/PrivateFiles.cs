using System.Runtime.InteropServices;

namespace Dtrain.Server;

/// <summary>
/// The coordinator's data directory is its own: job data, uploads, checkpoints, the ledger and the job store are created
/// owner-only — files 0600 in directories 0700 — whatever the process's umask (existing files keep their mode).
/// <c>dtrain serve</c> also sets the umask to 077, for anything else the process writes.
/// </summary>
public static class PrivateFiles
{
    public const UnixFileMode DirectoryMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
    public const UnixFileMode FileMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>Creates <paramref name="path"/> and any missing parent as 0700 (Directory.CreateDirectory gives the mode to the last one only); returns it.</summary>
    public static string CreateDirectory(string path)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) return path;
        if (Path.GetDirectoryName(full) is { } parent) CreateDirectory(parent);
        Directory.CreateDirectory(full, DirectoryMode);
        return path;
    }

    /// <summary>A new (or truncated) file, 0600 when created.</summary>
    public static FileStream Create(string path, FileMode mode = System.IO.FileMode.Create) =>
        new(path, new FileStreamOptions { Mode = mode, Access = mode == System.IO.FileMode.Append ? FileAccess.Write : FileAccess.ReadWrite, UnixCreateMode = FileMode });

    /// <summary><paramref name="bytes"/> as the whole of <paramref name="path"/> (0600 when created).</summary>
    public static void WriteAllBytes(string path, ReadOnlySpan<byte> bytes)
    {
        using var file = Create(path);
        file.Write(bytes);
    }

    public static void WriteAllText(string path, string text) => WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));

    /// <summary>Appends <paramref name="text"/> to <paramref name="path"/> (0600 when created).</summary>
    public static void AppendAllText(string path, string text)
    {
        using var file = Create(path, System.IO.FileMode.Append);
        file.Write(System.Text.Encoding.UTF8.GetBytes(text));
    }

    /// <summary>umask(077): whatever this process creates from now on is owner-only (the coordinator's process: `dtrain serve`).</summary>
    public static void RestrictUmask()
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) _ = umask(0x3F);
    }

    [DllImport("libc")]
    private static extern uint umask(uint mask);
}
