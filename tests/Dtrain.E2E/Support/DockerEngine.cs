namespace Dtrain.E2E.Support;

/// <summary>
/// The Docker engine these tests need: whether one answers, whether its absence is a failure (CI, or
/// DTRAIN_REQUIRE_DOCKER=1) rather than a skip, and the `docker` CLI.
/// </summary>
public static class DockerEngine
{
    public const string SkipReason = "no Docker engine: run scripts/docker-setup.sh as root, or set DTRAIN_REQUIRE_DOCKER=1 to make this a failure";

    static readonly Lazy<(bool Ok, string Detail)> Probe = new(() =>
    {
        try
        {
            var r = ProcessRunner.RunAsync("docker", ["version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})"], TimeSpan.FromSeconds(20))
                .GetAwaiter().GetResult();
            return r.ExitCode == 0 && r.Stdout.Trim().Length > 0
                ? (true, $"Docker engine {r.Stdout.Trim()}")
                : (false, $"`docker version` failed (exit {r.ExitCode}): {r.Stderr.Trim()}");
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or TimeoutException or InvalidOperationException)
        {
            return (false, $"`docker version` could not run: {e.Message}");
        }
    });

    /// <summary>A Docker engine answers `docker version`.</summary>
    public static bool Available => Probe.Value.Ok;

    /// <summary>What the probe found (the engine's version, or why there is none).</summary>
    public static string Detail => Probe.Value.Detail;

    /// <summary>In CI (CI set to anything) or with DTRAIN_REQUIRE_DOCKER=1, a missing engine fails the tests instead of skipping them.</summary>
    public static bool Required =>
        !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI")) || Environment.GetEnvironmentVariable("DTRAIN_REQUIRE_DOCKER") == "1";

    /// <summary>Runs `docker ARGS...` (bounded).</summary>
    public static Task<ProcessResult> RunAsync(params string[] args) => RunAsync(TimeSpan.FromMinutes(2), args);

    public static Task<ProcessResult> RunAsync(TimeSpan timeout, params string[] args) => ProcessRunner.RunAsync("docker", args, timeout, RepoFiles.Root);

    /// <summary>Runs `docker ARGS...` and fails the test (with the full output) unless it exits 0.</summary>
    public static async Task<ProcessResult> CheckAsync(params string[] args)
    {
        var r = await RunAsync(args).ConfigureAwait(false);
        Assert.True(r.ExitCode == 0, r.ToString());
        return r;
    }
}

/// <summary>A test that needs a Docker engine: skipped without one, unless CI or DTRAIN_REQUIRE_DOCKER=1 make that a failure.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class DockerFactAttribute : FactAttribute
{
    public DockerFactAttribute()
    {
        if (!DockerEngine.Required && !DockerEngine.Available) Skip = $"{DockerEngine.SkipReason} ({DockerEngine.Detail})";
    }
}

/// <summary>`docker logs -f` of one container, collected in the background until it exits (or this is disposed).</summary>
public sealed class LogFollower : IDisposable
{
    readonly System.Diagnostics.Process process;
    readonly System.Text.StringBuilder text = new();
    readonly Task done;

    public LogFollower(string containerId)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("docker") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "logs", "-f", "--timestamps", containerId }) psi.ArgumentList.Add(a);
        process = System.Diagnostics.Process.Start(psi) ?? throw new InvalidOperationException("could not start docker logs");
        done = Task.WhenAll(Pump(process.StandardOutput), Pump(process.StandardError));
    }

    async Task Pump(StreamReader reader)
    {
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
            lock (text) text.AppendLine(line);
    }

    /// <summary>The log so far, after waiting up to <paramref name="wait"/> for the container to exit.</summary>
    public async Task<string> TextAsync(TimeSpan wait)
    {
        await Task.WhenAny(done, Task.Delay(wait)).ConfigureAwait(false);
        lock (text) return text.ToString();
    }

    public void Dispose()
    {
        try
        {
            if (!process.HasExited) process.Kill();
        }
        catch (InvalidOperationException)
        {
            // Exited meanwhile.
        }
        process.Dispose();
    }
}
