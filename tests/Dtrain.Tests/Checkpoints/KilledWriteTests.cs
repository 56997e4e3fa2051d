using System.Diagnostics;
using System.Reflection;
using Dtrain.Checkpoints;

namespace Dtrain.Tests.Checkpoints;

/// <summary>
/// A real writer process (tests/Dtrain.CheckpointWriter) is SIGKILLed in the middle of saving a large checkpoint.
/// </summary>
public class KilledWriteTests
{
    private const int SizeMb = 200;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Writer_killed_mid_write_leaves_previous_checkpoint_loadable_and_torn_file_unused()
    {
        using var dir = new TempDirectory();
        var store = new CheckpointStore(dir.Path, keepLast: 5);
        var previous = Samples.Checkpoint(1, modelBytes: 1 << 20);
        string previousPath = store.Save(previous);

        using var writer = StartWriter(dir.Path, step: 2);
        try
        {
            using var cts = new CancellationTokenSource(Timeout);
            await ExpectLine(writer, "writing", cts.Token);
            string halfway = await ExpectLine(writer, "halfway", cts.Token);

            writer.Kill(); // SIGKILL on Unix; the writer is now sleeping between 1 MiB chunks
            Assert.True(writer.WaitForExit((int)Timeout.TotalMilliseconds), "writer did not die after SIGKILL");
            if (!OperatingSystem.IsWindows())
                Assert.Equal(128 + 9, writer.ExitCode); // terminated by SIGKILL

            long writtenAtHalfway = long.Parse(halfway["halfway ".Length..], System.Globalization.CultureInfo.InvariantCulture);
            Assert.True(writtenAtHalfway >= SizeMb / 2 * (1L << 20) - 8192);
        }
        finally
        {
            if (!writer.HasExited)
            {
                writer.Kill();
                writer.WaitForExit((int)Timeout.TotalMilliseconds);
            }
        }

        // The kill really happened mid-write: a partial temp file, no final file for step 2.
        string torn = Assert.Single(Directory.GetFiles(dir.Path, ".ckpt-000000002-*.tmp"));
        long tornLength = new FileInfo(torn).Length;
        Assert.InRange(tornLength, 1, SizeMb * (1L << 20) - 1);
        Assert.False(File.Exists(dir.File(CheckpointStore.FileName(2))));

        // The previous checkpoint still loads, and the torn write is not picked up.
        Samples.AssertSameCheckpoint(previous, store.Load(previousPath));
        Assert.Equal([1L], store.List().Select(c => c.Step));
        var latest = store.LoadLatest();
        Assert.NotNull(latest);
        Assert.Equal(previousPath, latest.Path);
        Assert.Empty(latest.Skipped);
        Samples.AssertSameCheckpoint(previous, latest.Data);

        // Even had the torn bytes landed under the final name, they would be detected and skipped.
        string misplaced = dir.File(CheckpointStore.FileName(2));
        File.Copy(torn, misplaced);
        latest = store.LoadLatest();
        Assert.Equal(previousPath, latest!.Path);
        var skipped = Assert.Single(latest.Skipped);
        Assert.Equal(misplaced, skipped.Path);
        Assert.Contains("truncated", skipped.Reason);
        File.Delete(misplaced);

        // The next save cleans up the torn temp file.
        store.Save(Samples.Checkpoint(3));
        Assert.False(File.Exists(torn));
        Assert.Equal([1L, 3], store.List().Select(c => c.Step));
    }

    private static Process StartWriter(string directory, long step)
    {
        string writerDll = WriterDllPath();
        var start = new ProcessStartInfo(DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "exec", writerDll, directory, step.ToString(System.Globalization.CultureInfo.InvariantCulture), SizeMb.ToString(System.Globalization.CultureInfo.InvariantCulture) })
            start.ArgumentList.Add(arg);
        var process = Process.Start(start) ?? throw new InvalidOperationException("could not start the checkpoint writer");
        process.ErrorDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        return process;
    }

    private static async Task<string> ExpectLine(Process process, string prefix, CancellationToken cancel)
    {
        string? line;
        try
        {
            line = await process.StandardOutput.ReadLineAsync(cancel);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"checkpoint writer did not print '{prefix}' within {Timeout}");
        }
        Assert.NotNull(line);
        Assert.StartsWith(prefix, line);
        return line;
    }

    private static string WriterDllPath()
    {
        string? path = typeof(KilledWriteTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == "CheckpointWriterPath")?.Value;
        Assert.False(string.IsNullOrEmpty(path), "CheckpointWriterPath metadata missing from the test assembly");
        Assert.True(File.Exists(path), $"checkpoint writer not built: {path}");
        return path;
    }

    private static string DotnetHost()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host))
            return host;
        string? self = Environment.ProcessPath;
        if (self is not null && Path.GetFileNameWithoutExtension(self) == "dotnet")
            return self;
        return "dotnet";
    }
}
