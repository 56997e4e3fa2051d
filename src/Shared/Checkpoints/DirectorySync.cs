using System.Runtime.InteropServices;

namespace Dtrain.Checkpoints;

/// <summary>fsync of a directory, so that a rename inside it survives a power loss. Linux only; no-op elsewhere.</summary>
public static class DirectorySync
{
    private const int ORdOnly = 0;
    private const int OCloExec = 0x80000;
    private const int EIntr = 4;
    private const int EInval = 22;

    // O_DIRECTORY differs between architectures: 0x4000 on arm/arm64, 0x10000 on x86/x64 (and most others).
    private static int ODirectory =>
        RuntimeInformation.ProcessArchitecture is Architecture.Arm or Architecture.Arm64 ? 0x4000 : 0x10000;

    public static void Fsync(string directory)
    {
        if (!OperatingSystem.IsLinux())
            return;

        int fd = open(directory, ORdOnly | ODirectory | OCloExec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot open directory {directory} to fsync it (errno {errno})");
        }
        try
        {
            int rc;
            do
            {
                rc = fsync(fd);
            }
            while (rc != 0 && Marshal.GetLastPInvokeError() == EIntr);
            if (rc != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                // Some file systems do not support fsync on directories; there is nothing more to do there.
                if (errno != EInval)
                    throw new IOException($"fsync of directory {directory} failed (errno {errno})");
            }
        }
        finally
        {
            _ = close(fd);
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int fsync(int fd);

    [DllImport("libc", SetLastError = true)]
    private static extern int close(int fd);
}
