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

    /// <summary>
    /// How the CLI is started (output redirected, 1 torch thread), with extra environment variables (a null value
    /// removes the variable): for a test that drives the process itself.
    /// </summary>
    public static ProcessStartInfo StartInfo(string workDir, IReadOnlyDictionary<string, string?>? environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dtrain.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DTRAIN_THREADS"] = "1";
        foreach (var (k, v) in environment ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        return psi;
    }

    /// <summary>Runs with extra environment variables (a null value removes the variable).</summary>
    public static Result Run(string workDir, TimeSpan timeout, IReadOnlyDictionary<string, string?>? environment, params string[] args)
    {
        var psi = StartInfo(workDir, environment, args);
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

    /// <summary>
    /// Starts a long-running command (serve, worker, cluster up) and waits until a line of its standard output satisfies
    /// <paramref name="ready"/>, it exits, or <paramref name="timeout"/> passes; then stops it (its whole process tree).
    /// Ready is false when it exited or timed out first; the output so far (and the exit code, -1 when it was stopped) is returned.
    /// </summary>
    public static (bool Ready, Result Output) RunUntil(string workDir, TimeSpan timeout, IReadOnlyDictionary<string, string?>? environment, Func<string, bool> ready, params string[] args)
    {
        var psi = StartInfo(workDir, environment, args);
        var stdout = new System.Text.StringBuilder();
        var stderr = new System.Text.StringBuilder();
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stdout) stdout.AppendLine(e.Data);
            if (ready(e.Data)) seen.TrySetResult();
        };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
        };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var exited = p.WaitForExitAsync();
        Task.WaitAny([seen.Task, exited], timeout);
        var isReady = seen.Task.IsCompleted;
        var exitCode = -1;
        if (!p.HasExited)
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }
        else
        {
            p.WaitForExit(); // drains the redirected streams
            exitCode = p.ExitCode;
        }
        string Text(System.Text.StringBuilder b) { lock (b) return b.ToString(); }
        return (isReady, new Result(exitCode, Text(stdout), Text(stderr)));
    }
}
