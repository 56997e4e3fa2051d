using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cli;

/// <summary>A file given where a directory is expected, or the reverse: exit 2 naming the option and the path, before anything is used.</summary>
public sealed class PathKindTests
{
    [Fact]
    public void A_directory_for_a_file_or_a_file_for_a_directory_exits_2_naming_the_option_and_path()
    {
        using var tmp = new TempDir();
        var dir = Path.Combine(tmp.Path, "adir");
        Directory.CreateDirectory(dir);
        var file = tmp.Write("afile", "keep me");
        tmp.Write("t.txt", TestJobs.Text());
        var spec = tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 2)));
        // Nothing listens there: each path is checked before the coordinator is asked anything.
        const string nowhere = "http://127.0.0.1:1";
        var tokenStore = Path.Combine(tmp.Path, "tokens");
        foreach (var (args, message) in new (string[], string)[]
                 {
                     (["download", "job-0001", "-o", dir, "--coordinator", nowhere], $"--output: {dir} is an existing directory; give the file to write, e.g. {dir}/job-0001.dtck"),
                     (["metrics", "job-0001", "-o", dir, "--coordinator", nowhere], $"--output: {dir} is an existing directory; give the file to write"),
                     (["cluster", "run", spec, "--workers", "1", "--logs", file], $"--logs: {file} is an existing file, not a directory"),
                     (["cluster", "up", "--workers", "1", "--port", "0", "--logs", Path.Combine(file, "logs")], $"--logs: cannot create {file}/logs: {file} is an existing file, not a directory"),
                     (["serve", "--port", "0", "--data-dir", file], $"--data-dir: {file} is an existing file, not a directory"),
                     (["certs", "init", file], $"certs init DIR: {file} is an existing file, not a directory"),
                     (["tokens", "create", "--role", "admin", "--name", "a", "--data-dir", tokenStore, "-o", dir], $"--output: {dir} is an existing directory"),
                     (["tokens", "list", "--data-dir", file], $"--data-dir: {file} is an existing file, not a directory"),
                     (["list", "--token-file", dir, "--coordinator", nowhere], $"token file {dir} (--token-file) is a directory"),
                 })
        {
            var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), args);
            Assert.True(r.ExitCode == 2, $"{string.Join(' ', args)}: {r}");
            Assert.Contains($"error: {message}", r.Stderr);
            Assert.DoesNotContain("Exception", r.Stderr);
            Assert.DoesNotContain("starting", r.Stdout);
        }
        var viaEnvironment = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), new Dictionary<string, string?> { ["DTRAIN_Coordinator__DataDir"] = file }, "serve", "--port", "0");
        Assert.True(viaEnvironment.ExitCode == 2, viaEnvironment.ToString());
        Assert.Contains($"Coordinator:DataDir: \"{file}\" is an existing file, not a directory", viaEnvironment.Stderr);

        Assert.Equal("keep me", File.ReadAllText(file));
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir));
        Assert.False(Directory.Exists(tokenStore), "the token was created though it could not be written to --output");
    }
}
