using System.Diagnostics;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Bench;

/// <summary>
/// The benchmark suite runs as documented (README, docs/benchmarks.md): a crash in it went unnoticed once. Tiny sizes,
/// one round: this checks that it runs and prints its table, not its numbers.
/// </summary>
public class BenchSmokeTests
{
    private static string BenchDll()
    {
        // The bench is built with the solution, in the configuration these tests were built in.
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent?.Name ?? "Release";
        var dll = RepoFiles.PathOf("bench", "Dtrain.Bench", "bin", configuration, "net10.0", "dtrain-bench.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: build Distributed.sln first");
        return dll;
    }

    [Fact]
    public async Task Allreduce_prints_a_row_per_transport()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { BenchDll(), "allreduce", "--transports", "shm,shm-ring,tcp,grpc", "--workers", "2", "--sizes", "1", "--rounds", "1" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = await p.StandardOutput.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await p.WaitForExitAsync(timeout.Token);
        Assert.True(p.ExitCode == 0, $"exit status {p.ExitCode}\n{stdout}\n{await stderr}");
        foreach (var transport in new[] { "shm", "shm-ring", "tcp", "grpc" })
            Assert.Matches($@"(?m)^\| {transport} \| 2 \| 1M \| 4 \| [0-9.]+ \| [0-9.]+ \[", stdout);
    }
}
