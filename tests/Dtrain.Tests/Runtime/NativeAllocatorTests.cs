using System.Diagnostics;
using Dtrain.Cli;
using Dtrain.Runtime;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Runtime;

public sealed class NativeAllocatorTests
{
    [Fact]
    public void Cluster_processes_start_on_tcmalloc()
    {
        // scripts/setup.sh installs libtcmalloc-minimal4; without it dtrain trains ~1.5x slower, so this fails loudly.
        Assert.True(NativeAllocator.Library() is not null, "no tcmalloc found: run scripts/setup.sh (Debian package libtcmalloc-minimal4)");
        // A real worker of a local cluster, started the way `dtrain cluster` starts it, with nothing preloaded by
        // the environment it inherits: its own memory map must hold tcmalloc.
        using var tmp = new TempDir();
        using var cluster = LocalCluster.Start(1, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), new Dictionary<string, string> { ["LD_PRELOAD"] = "" });
        var pid = cluster.WorkerProcessId(0);
        var cmdline = File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ');
        Assert.Contains("dtrain.dll worker", cmdline, StringComparison.Ordinal);
        var mapped = File.ReadLines($"/proc/{pid}/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "").ToHashSet();
        Assert.Contains(mapped, f => f.Contains("libtcmalloc_minimal.so", StringComparison.Ordinal));
    }

    [Fact]
    public void Preload_keeps_what_is_already_preloaded_and_does_not_add_twice()
    {
        var psi = new ProcessStartInfo("true");
        psi.Environment["LD_PRELOAD"] = "/lib/other.so";
        NativeAllocator.Preload(psi);
        NativeAllocator.Preload(psi);
        var parts = psi.Environment["LD_PRELOAD"]!.Split(':');
        Assert.Equal([NativeAllocator.Library()!, "/lib/other.so"], parts);
    }

    /// <summary>
    /// Runs the ./dtrain script with <paramref name="setting"/> as DTRAIN_MALLOC, up to where it would start the CLI:
    /// an `echo` of LD_PRELOAD stands in for `exec dotnet`, and a just-written file for the built CLI (so no build).
    /// </summary>
    private static (int ExitCode, string Output) RunScript(string setting)
    {
        using var tmp = new TempDir();
        var fresh = tmp.Write("dtrain.dll", "newer than every source: no build");
        var script = File.ReadAllText(Path.Combine(RepoFiles.Root, "dtrain"));
        var psi = new ProcessStartInfo("/bin/bash", ["-c", script.Replace("exec dotnet \"$dll\" \"$@\"", "echo \"LD_PRELOAD=${LD_PRELOAD:-}\"", StringComparison.Ordinal)
            .Replace("dll=\"$root/src/Cli/bin/Release/net10.0/dtrain.dll\"", $"dll={fresh}", StringComparison.Ordinal)])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = RepoFiles.Root };
        psi.Environment.Remove("LD_PRELOAD");
        psi.Environment["DTRAIN_MALLOC"] = setting;
        using var p = Process.Start(psi)!;
        var error = p.StandardError.ReadToEndAsync();
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output + error.GetAwaiter().GetResult());
    }

    [Fact]
    public void The_dtrain_script_preloads_tcmalloc_unless_told_not_to()
    {
        Assert.Contains("libtcmalloc_minimal.so.4", File.ReadAllText(Path.Combine(RepoFiles.Root, "dtrain")), StringComparison.Ordinal);
        foreach (var (setting, expected) in new[] { ("", true), ("default", false) })
        {
            var (exitCode, output) = RunScript(setting);
            Assert.Equal(0, exitCode);
            Assert.Contains("LD_PRELOAD=", output, StringComparison.Ordinal);
            Assert.Equal(expected, output.Contains("tcmalloc", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void DTRAIN_MALLOC_default_or_a_missing_file_is_honoured()
    {
        Assert.Null(NativeAllocator.Library("default"));
        Assert.Equal(NativeAllocator.Library(null), NativeAllocator.Library(""));
        var e = Assert.Throws<FileNotFoundException>(() => NativeAllocator.Library("/nonexistent/libfoo.so"));
        Assert.Contains("/nonexistent/libfoo.so", e.Message, StringComparison.Ordinal);
        // The script refuses it before starting anything, with the same wording.
        var (exitCode, output) = RunScript("/nonexistent/libfoo.so");
        Assert.Equal(2, exitCode);
        Assert.Contains("DTRAIN_MALLOC names /nonexistent/libfoo.so, which does not exist", output, StringComparison.Ordinal);
    }
}
