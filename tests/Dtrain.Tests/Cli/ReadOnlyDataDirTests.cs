using System.Diagnostics;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cli;

/// <summary>`dtrain serve` on a data directory it cannot write says so (and what to do), not that a file is damaged.</summary>
public class ReadOnlyDataDirTests
{
    [Fact]
    public async Task Serve_on_a_read_only_data_directory_without_a_store_says_it_cannot_create_the_store()
    {
        using var tmp = new TempDir();
        var data = Path.Combine(tmp.Path, "data");
        Directory.CreateDirectory(data);
        File.SetUnixFileMode(tmp.Path, (UnixFileMode)Convert.ToInt32("755", 8));
        File.SetUnixFileMode(data, (UnixFileMode)Convert.ToInt32("555", 8));
        try
        {
            var psi = CliRunner.StartInfo(tmp.Path, new Dictionary<string, string?> { ["HOME"] = tmp.Path }, "serve", "--port", "0", "--http-port", "-1", "--data-dir", data);
            // root writes to a read-only directory regardless of its mode: run the coordinator as an ordinary user.
            if (Environment.UserName == "root")
            {
                var args = psi.ArgumentList.ToList();
                psi.FileName = "setpriv";
                psi.ArgumentList.Clear();
                foreach (var a in (string[])["--reuid=65534", "--regid=65534", "--clear-groups", "dotnet", .. args]) psi.ArgumentList.Add(a);
            }
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
            try
            {
                await p.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                p.Kill(entireProcessTree: true);
                Assert.Fail("serve on a read-only data directory did not exit: " + await stdout);
            }
            var result = new CliRunner.Result(p.ExitCode, await stdout, await stderr);
            Assert.True(result.ExitCode == 2, result.ToString());
            var error = result.Stderr.Split('\n').Single(l => l.StartsWith("error: ", StringComparison.Ordinal));
            Assert.Contains($"{data}/jobs.db: cannot create the coordinator's job store: the data directory {data} cannot be written", error);
            Assert.Contains("give `dtrain serve --data-dir`", error);
            Assert.DoesNotContain("damaged", error);
        }
        finally
        {
            File.SetUnixFileMode(data, (UnixFileMode)Convert.ToInt32("755", 8));
        }
    }
}
