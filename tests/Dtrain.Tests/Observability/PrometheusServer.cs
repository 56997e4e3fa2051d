using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Dtrain.Tests.Observability;

/// <summary>
/// A real Prometheus (Debian's `prometheus` package, /usr/bin/prometheus, or $DTRAIN_PROMETHEUS) started by the test
/// on a free loopback port with its own config and storage in a temporary directory; killed on dispose.
/// </summary>
public sealed class PrometheusServer : IDisposable
{
    /// <summary>The binary, or null when it is not installed.</summary>
    public static string? Binary =>
        Environment.GetEnvironmentVariable("DTRAIN_PROMETHEUS") is { Length: > 0 } set ? set
        : new[] { "/usr/bin/prometheus", "/usr/local/bin/prometheus" }.FirstOrDefault(File.Exists);

    /// <summary>In CI (CI set to anything) or with DTRAIN_REQUIRE_PROMETHEUS=1, a missing Prometheus fails the test instead of skipping it.</summary>
    public static bool Required =>
        !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI")) || Environment.GetEnvironmentVariable("DTRAIN_REQUIRE_PROMETHEUS") == "1";

    public const string SkipReason = "no Prometheus: `apt-get install -y prometheus` (Debian), or set DTRAIN_REQUIRE_PROMETHEUS=1 to make this a failure";

    private readonly Process process;
    private readonly System.Text.StringBuilder output = new();
    private readonly HttpClient http = new() { Timeout = TimeSpan.FromSeconds(10) };

    public string Address { get; }

    /// <summary>What Prometheus printed so far (for failure messages).</summary>
    public string Output
    {
        get { lock (output) return output.ToString(); }
    }

    private PrometheusServer(Process process, string address)
    {
        this.process = process;
        Address = address;
    }

    /// <summary>Starts Prometheus with <paramref name="config"/> (prometheus.yml text) and waits until it is ready.</summary>
    public static async Task<PrometheusServer> StartAsync(string dir, string config, TimeSpan timeout)
    {
        var binary = Binary ?? throw new FileNotFoundException($"prometheus is not installed ({SkipReason})");
        var configFile = Path.Combine(dir, "prometheus.yml");
        await File.WriteAllTextAsync(configFile, config);
        var port = FreePort();
        var psi = new ProcessStartInfo(binary) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { $"--config.file={configFile}", $"--storage.tsdb.path={Path.Combine(dir, "data")}", $"--web.listen-address=127.0.0.1:{port}" })
            psi.ArgumentList.Add(a);
        var server = new PrometheusServer(Process.Start(psi)!, $"http://127.0.0.1:{port}");
        server.process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (server.output) server.output.AppendLine(e.Data); };
        server.process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (server.output) server.output.AppendLine(e.Data); };
        server.process.BeginOutputReadLine();
        server.process.BeginErrorReadLine();
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (server.process.HasExited) throw new InvalidOperationException($"prometheus exited with status {server.process.ExitCode}:\n{server.Output}");
            try
            {
                if ((await server.http.GetAsync(server.Address + "/-/ready")).StatusCode == HttpStatusCode.OK) return server;
            }
            catch (HttpRequestException)
            {
                // Not listening yet.
            }
            if (clock.Elapsed > timeout)
            {
                server.Dispose();
                throw new TimeoutException($"prometheus not ready within {timeout}:\n{server.Output}");
            }
            await Task.Delay(200);
        }
    }

    /// <summary>An instant query through the HTTP API (/api/v1/query): each series' labels and value.</summary>
    public async Task<List<(Dictionary<string, string> Labels, double Value)>> QueryAsync(string promql)
    {
        var json = await http.GetStringAsync($"{Address}/api/v1/query?query={Uri.EscapeDataString(promql)}");
        using var doc = JsonDocument.Parse(json);
        if (doc.RootElement.GetProperty("status").GetString() != "success") throw new InvalidOperationException($"query {promql}: {json}");
        return [.. doc.RootElement.GetProperty("data").GetProperty("result").EnumerateArray().Select(r => (
            r.GetProperty("metric").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString() ?? ""),
            double.Parse(r.GetProperty("value")[1].GetString()!, System.Globalization.CultureInfo.InvariantCulture)))];
    }

    /// <summary>The scrape targets Prometheus knows and their health (/api/v1/targets), for failure messages.</summary>
    public Task<string> TargetsAsync() => http.GetStringAsync(Address + "/api/v1/targets");

    private static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        try
        {
            if (!process.HasExited) process.Kill();
            process.WaitForExit(10_000);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        process.Dispose();
        http.Dispose();
    }
}

/// <summary>A test that needs Prometheus: skipped without it, unless CI or DTRAIN_REQUIRE_PROMETHEUS=1 make that a failure.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class PrometheusFactAttribute : FactAttribute
{
    public PrometheusFactAttribute()
    {
        if (PrometheusServer.Binary is null && !PrometheusServer.Required) Skip = PrometheusServer.SkipReason;
    }
}

/// <summary>A theory that needs Prometheus: skipped without it, unless CI or DTRAIN_REQUIRE_PROMETHEUS=1 make that a failure.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class PrometheusTheoryAttribute : TheoryAttribute
{
    public PrometheusTheoryAttribute()
    {
        if (PrometheusServer.Binary is null && !PrometheusServer.Required) Skip = PrometheusServer.SkipReason;
    }
}
