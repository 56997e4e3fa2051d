using System.Globalization;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Dtrain.E2E.Support;

/// <summary>
/// The `dtrain` CLI on the host, as a real process (the dtrain.dll built next to these tests, like
/// tests/Dtrain.Tests' CliRunner): every command and its output go to the test output. With <see cref="TlsDir"/> set,
/// it runs with DTRAIN_TLS_DIR (the cluster CA and the client certificate, as a user exports it); otherwise without.
/// </summary>
public sealed class HostCli(ITestOutputHelper output, string workDir)
{
    public string WorkDir { get; } = workDir;

    /// <summary>Sent as DTRAIN_TOKEN when set.</summary>
    public string? Token { get; set; }

    /// <summary>The client certificate directory of the cluster under test (DTRAIN_TLS_DIR), or null.</summary>
    public string? TlsDir { get; set; }

    /// <summary>More variables for every command (S3 endpoint and credentials, ...).</summary>
    public Dictionary<string, string> Environment { get; } = new(StringComparer.Ordinal);

    public async Task<ProcessResult> RunAsync(TimeSpan timeout, params string[] args)
    {
        var env = new Dictionary<string, string>(Environment) { ["DTRAIN_THREADS"] = "1", ["DTRAIN_TLS_DIR"] = TlsDir ?? "" };
        if (Token is not null) env["DTRAIN_TOKEN"] = Token;
        var r = await ProcessRunner.RunAsync("dotnet", ["exec", Path.Combine(AppContext.BaseDirectory, "dtrain.dll"), .. args], timeout, WorkDir, env).ConfigureAwait(false);
        output.WriteLine($"[{DateTime.Now:HH:mm:ss}] dtrain {string.Join(' ', args)}: exit {r.ExitCode} in {r.Elapsed.TotalSeconds:F1} s");
        output.WriteLine(Indent(r.Stdout));
        if (r.Stderr.Trim().Length > 0) output.WriteLine(Indent("stderr: " + r.Stderr));
        return r;
    }

    public Task<ProcessResult> RunAsync(params string[] args) => RunAsync(TimeSpan.FromMinutes(3), args);

    /// <summary>Runs and fails the test (with the full output) unless the command exits 0.</summary>
    public async Task<ProcessResult> CheckAsync(TimeSpan timeout, params string[] args)
    {
        var r = await RunAsync(timeout, args).ConfigureAwait(false);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }

    public Task<ProcessResult> CheckAsync(params string[] args) => CheckAsync(TimeSpan.FromMinutes(3), args);

    /// <summary>`submit SPEC --workers N [--watch]`; returns the job id (the first line `submit` prints) and the result.</summary>
    public async Task<(string Id, ProcessResult Result)> SubmitAsync(string coordinator, string spec, int workers, bool watch, TimeSpan? timeout = null, params string[] extra)
    {
        string[] args = ["submit", spec, "--workers", workers.ToString(CultureInfo.InvariantCulture), "--coordinator", coordinator, .. extra];
        var r = await RunAsync(timeout ?? TimeSpan.FromMinutes(3), watch ? [.. args, "--watch", "--plain"] : args).ConfigureAwait(false);
        var id = Regex.Match(r.Stdout, @"^(job-\d+)\s*$", RegexOptions.Multiline);
        Assert.True(id.Success, $"submit printed no job id\n{r}");
        return (id.Groups[1].Value, r);
    }

    /// <summary>The worker ids `dtrain status JOB` lists on its "workers:" line.</summary>
    public async Task<IReadOnlyList<string>> StatusWorkersAsync(string coordinator, string job)
    {
        var r = await CheckAsync("status", job, "--coordinator", coordinator).ConfigureAwait(false);
        var line = Regex.Match(r.Stdout, @"^\s*workers:\s*(?<ids>.*?)\s*\(requested", RegexOptions.Multiline);
        Assert.True(line.Success, $"no workers line in `status`:\n{r}");
        var ids = line.Groups["ids"].Value.Trim();
        return ids == "-" ? [] : ids.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
    }

    static string Indent(string text) => string.Join('\n', text.TrimEnd().Split('\n').Select(l => "    " + l));
}

/// <summary>Metrics as `dtrain eval` prints them: "loss 1.2345, accuracy 87.50%, macro-F1 ..., perplexity ..., bits/token ...".</summary>
public sealed record EvalResult(double Loss, double? Accuracy, long Count)
{
    public static EvalResult Parse(ProcessResult r)
    {
        var loss = Regex.Match(r.Stdout, @"^loss (?<v>[0-9.]+|NaN|∞)", RegexOptions.Multiline);
        Assert.True(loss.Success, $"no `loss` line in the eval output:\n{r}");
        var count = Regex.Match(r.Stdout, @": (?<n>\d+) (tokens|examples)\s*$", RegexOptions.Multiline);
        Assert.True(count.Success, $"no evaluated count in the eval output:\n{r}");
        var accuracy = Regex.Match(r.Stdout, @"accuracy (?<v>[0-9.]+)%");
        return new EvalResult(
            double.Parse(loss.Groups["v"].Value, CultureInfo.InvariantCulture),
            accuracy.Success ? double.Parse(accuracy.Groups["v"].Value, CultureInfo.InvariantCulture) / 100 : null,
            long.Parse(count.Groups["n"].Value, CultureInfo.InvariantCulture));
    }
}
