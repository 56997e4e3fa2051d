using System.Diagnostics;

namespace Dtrain.Runtime;

/// <summary>
/// Which malloc the process runs on, and how dtrain's processes get tcmalloc.
/// </summary>
/// <remarks>
/// libtorch's recurrent kernels (oneDNN) allocate and free workspaces of about 42 MB several times per step. glibc
/// serves every allocation over 32 MiB (the largest mmap threshold it accepts) with a fresh mmap and unmaps it on
/// free, so each step faults hundreds of MiB of new pages in: on the W1 workload ~25k page faults and a third of
/// the step time in the kernel. glibc cannot be tuned out of it without unbounded heap growth (mmap off: 2.2 GB
/// resident after 300 steps and rising). tcmalloc keeps and reuses those spans: W1 ran 1.5x faster at the same
/// resident size (~300 MB), which is what PyTorch users get from LD_PRELOAD-ing tcmalloc or jemalloc.
/// The allocator must be chosen before the process starts, so the <c>dtrain</c> script, the local cluster and the
/// container images preload it (Debian package libtcmalloc-minimal4, installed by scripts/setup.sh).
/// <c>DTRAIN_MALLOC=default</c> turns it off; <c>DTRAIN_MALLOC=/path/lib.so</c> preloads another library.
/// </remarks>
public static class NativeAllocator
{
    private static readonly string[] Candidates =
    [
        "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
        "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
        "/usr/lib64/libtcmalloc_minimal.so.4",
        "/usr/lib/libtcmalloc_minimal.so.4",
    ];

    /// <summary>The library dtrain preloads: DTRAIN_MALLOC when it names a file, else tcmalloc where installed; null when none or DTRAIN_MALLOC=default.</summary>
    public static string? Library() => Library(Environment.GetEnvironmentVariable("DTRAIN_MALLOC"));

    /// <summary><see cref="Library()"/> for a given DTRAIN_MALLOC value.</summary>
    public static string? Library(string? setting)
    {
        if (string.Equals(setting, "default", StringComparison.OrdinalIgnoreCase)) return null;
        if (!string.IsNullOrEmpty(setting)) return File.Exists(setting) ? setting : throw new FileNotFoundException($"DTRAIN_MALLOC names {setting}, which does not exist (use 'default' for the system allocator)", setting);
        return OperatingSystem.IsLinux() ? Candidates.FirstOrDefault(File.Exists) : null;
    }

    /// <summary>Makes a child process start on <see cref="Library()"/> (prepended to LD_PRELOAD), unless it already does.</summary>
    public static void Preload(ProcessStartInfo child)
    {
        var library = Library();
        if (library is null) return;
        var current = child.Environment.TryGetValue("LD_PRELOAD", out var v) ? v ?? "" : "";
        if (current.Split(':', ' ').Contains(library)) return;
        child.Environment["LD_PRELOAD"] = current.Length == 0 ? library : $"{library}:{current}";
    }

    /// <summary>The allocator this process runs on, for logs: "tcmalloc (...)" or "glibc malloc (...)"; never throws.</summary>
    public static string Describe()
    {
        try
        {
            if (File.Exists("/proc/self/maps"))
            {
                var preloaded = File.ReadLines("/proc/self/maps")
                    .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "")
                    .FirstOrDefault(p => p.Contains("tcmalloc", StringComparison.Ordinal) || p.Contains("jemalloc", StringComparison.Ordinal) || p.Contains("mimalloc", StringComparison.Ordinal));
                if (preloaded is not null) return $"{Path.GetFileName(preloaded).Split('.')[0].Replace("lib", "", StringComparison.Ordinal)} ({preloaded})";
            }
        }
        catch (IOException)
        {
        }
        try
        {
            return Library() is { } available
                ? $"glibc malloc ({available} is installed but not preloaded: start through ./dtrain or set LD_PRELOAD)"
                : "glibc malloc (install libtcmalloc-minimal4 for faster recurrent training)";
        }
        catch (FileNotFoundException e)
        {
            // A log line must not fail the work it describes: the bad setting is reported, not thrown.
            return $"glibc malloc ({e.Message})";
        }
    }
}
