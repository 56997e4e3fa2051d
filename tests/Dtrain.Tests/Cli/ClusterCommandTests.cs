using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cli;

/// <summary>`dtrain cluster run` / `cluster up`: what they refuse before starting anything, and whose coordinator they use.</summary>
public sealed class ClusterCommandTests
{
    static string TinySpec(TempDir tmp)
    {
        tmp.Write("t.txt", TestJobs.Text());
        return tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2)));
    }

    [Fact]
    public void Workers_threads_and_port_out_of_range_exit_2_naming_the_option_and_range_before_anything_starts()
    {
        using var tmp = new TempDir();
        var spec = TinySpec(tmp);
        foreach (var (args, message) in new (string[], string)[]
                 {
                     (["run", spec, "--workers", "0"], "--workers 0 must be a number of workers from 1 to 64"),
                     (["run", spec, "--workers", "100"], "--workers 100 must be a number of workers from 1 to 64"),
                     (["run", spec, "--threads", "-1"], "--threads -1 must be a number of torch threads per worker from 1 to 1024"),
                     (["run", spec, "--port", "70000"], "--port 70000 must be a TCP port from 1 to 65535, or 0 for any free port"),
                     (["up", "--workers", "0"], "--workers 0 must be a number of workers from 1 to 64"),
                     (["up", "--threads", "0"], "--threads 0 must be a number of torch threads per worker from 1 to 1024"),
                 })
        {
            var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), ["cluster", .. args, "--logs", Path.Combine(tmp.Path, "logs")]);
            Assert.True(r.ExitCode == 2, $"cluster {string.Join(' ', args)}: {r}");
            Assert.Contains($"error: {message}", r.Stderr);
            Assert.DoesNotContain("Exception", r.Stderr);
            Assert.DoesNotContain("starting", r.Stdout);
            Assert.DoesNotContain("cluster up:", r.Stdout);
        }
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "logs")), "a process was started");
    }
}
