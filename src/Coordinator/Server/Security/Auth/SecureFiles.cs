using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Dtrain.Server.Auth;

/// <summary>
/// Files that hold secrets or the audit trail in the coordinator's data directory: owner-only (0600), replaced
/// atomically, and serialised across processes (the coordinator and `dtrain tokens` may write at the same time).
/// </summary>
public static class SecureFiles
{
    public const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    const UnixFileMode GroupOrOthers = UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute |
                                       UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;

    const UnixFileMode GroupOrOthersWrite = UnixFileMode.GroupWrite | UnixFileMode.OtherWrite;

    /// <summary>An exclusive lock on <paramref name="path"/> (created 0600), held until disposed; other processes wait for it.</summary>
    public static FileStream Lock(string path, TimeSpan timeout)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                // FileShare.None takes an exclusive flock on Unix: dtrain processes on this machine serialise here.
                return new FileStream(path, new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.None, UnixCreateMode = OwnerOnly });
            }
            catch (IOException) when (clock.Elapsed < timeout)
            {
                Thread.Sleep(10);
            }
        }
    }

    /// <summary>Replaces <paramref name="path"/> with <paramref name="content"/> (0600): written to a temporary file, flushed to disk, renamed over it.</summary>
    public static void WriteAtomically(string path, byte[] content)
    {
        var tmp = path + ".tmp";
        using (var file = new FileStream(tmp, new FileStreamOptions { Mode = FileMode.Create, Access = FileAccess.Write, UnixCreateMode = OwnerOnly }))
        {
            file.Write(content);
            file.Flush(flushToDisk: true);
        }
        File.SetUnixFileMode(tmp, OwnerOnly);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Appends one line (0600 file), flushed to disk before returning; appends of several processes never overwrite each other.</summary>
    public static void AppendLine(string path, string line)
    {
        using var _ = Lock(path + ".lock", TimeSpan.FromSeconds(10));
        using var file = new FileStream(path, new FileStreamOptions { Mode = FileMode.Append, Access = FileAccess.Write, Share = FileShare.ReadWrite, UnixCreateMode = OwnerOnly });
        file.Write(Encoding.UTF8.GetBytes(line + "\n"));
        file.Flush(flushToDisk: true);
    }

    /// <summary>The permission bits as ssh prints them, e.g. 0644.</summary>
    public static string Octal(UnixFileMode mode) => "0" + Convert.ToString((int)mode & 0x1FF, 8).PadLeft(3, '0');

    /// <summary>Throws when group or others may read or write <paramref name="path"/> (a token file: like ssh with a private key).</summary>
    public static void RequirePrivate(string path, string what)
    {
        var mode = File.GetUnixFileMode(path);
        if ((mode & GroupOrOthers) != 0)
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"{what} {path} has permissions {Octal(mode)}: it holds a secret and must not be accessible by group or others; run: chmod 600 {path}"));
    }

    /// <summary>Throws when group or others may write <paramref name="path"/> (they could add tokens).</summary>
    public static void RequireNotWritableByOthers(string path, string what)
    {
        var mode = File.GetUnixFileMode(path);
        if ((mode & GroupOrOthersWrite) != 0)
            throw new InvalidDataException($"{what} {path} has permissions {Octal(mode)}: group or others could add tokens; run: chmod 600 {path}");
    }
}
