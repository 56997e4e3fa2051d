using System.Diagnostics;

namespace Dtrain.Tests.Support;

/// <summary>Runs the real `dtrain` CLI (built next to the tests) as a child process, with a bounded wait.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public override string ToString() => $"exit {ExitCode}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}";
    }

    public static Result Run(string workDir, params string[] args) => Run(workDir, TimeSpan.FromMinutes(3), args);

    public static Result Run(string workDir, TimeSpan timeout, params string[] args) => Run(workDir, timeout, null, args);

    /// <summary>Runs with extra environment variables (a null value removes the variable).</summary>
    public static Result Run(string workDir, TimeSpan timeout, IReadOnlyDictionary<string, string?>? environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dtrain.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DTRAIN_THREADS"] = "1";
        foreach (var (k, v) in environment ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"dtrain {string.Join(' ', args)} did not finish within {timeout}");
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
