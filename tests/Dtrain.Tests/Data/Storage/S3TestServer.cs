using System.Diagnostics;
using System.Globalization;
using Amazon.Runtime;
using Dtrain.Data.Storage;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Storage;

/// <summary>
/// The real S3-compatible server of the storage tests (eng/s3-server: s3rver, checking SigV4 signatures), started by
/// the test as a Node.js process on a free loopback port with its own storage directory, one account (a random access
/// key and secret) and one bucket; killed on dispose. Its log has one line per request, which tests count.
/// </summary>
public sealed class S3TestServer : IDisposable
{
    public const string SkipReason = "no S3 test server: run scripts/test-tools.sh (npm ci in eng/s3-server; needs Node.js), or set DTRAIN_REQUIRE_S3=1 to make this a failure";

    /// <summary>Why the server cannot start here (Node.js or the npm package missing), or null when it can.</summary>
    public static string? Missing
    {
        get
        {
            if (Node is null) return "no `node` on PATH (Debian: apt-get install nodejs)";
            if (!File.Exists(Node)) return $"DTRAIN_NODE is {Node}, which does not exist";
            if (!File.Exists(RepoFiles.PathOf("eng", "s3-server", "node_modules", "@20minutes", "s3rver", "package.json")))
                return "eng/s3-server/node_modules is not installed (scripts/test-tools.sh runs npm ci there)";
            return null;
        }
    }

    /// <summary>In CI (CI set to anything) or with DTRAIN_REQUIRE_S3=1, a missing server fails the tests instead of skipping them.</summary>
    public static bool Required =>
        !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI")) || Environment.GetEnvironmentVariable("DTRAIN_REQUIRE_S3") == "1";

    static string? Node =>
        Environment.GetEnvironmentVariable("DTRAIN_NODE") is { Length: > 0 } set ? set
        : (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, "node")).FirstOrDefault(File.Exists);

    readonly Process process;
    readonly List<string> log = [];
    readonly TaskCompletionSource<string> listening = new(TaskCreationOptions.RunContinuationsAsynchronously);

    S3TestServer(Process process, string bucket, string accessKey, string secretKey)
    {
        this.process = process;
        Bucket = bucket;
        AccessKey = accessKey;
        SecretKey = secretKey;
    }

    public string Bucket { get; }
    public string AccessKey { get; }
    public string SecretKey { get; }
    public Uri Endpoint { get; private set; } = null!;

    /// <summary>What the server printed so far (one line per request), for counts and failure messages.</summary>
    public IReadOnlyList<string> Log
    {
        get { lock (log) return [.. log]; }
    }

    /// <summary>Starts the server with its storage in <paramref name="directory"/> and bucket <paramref name="bucket"/>; waits until it listens.</summary>
    public static Task<S3TestServer> StartAsync(string directory, string bucket = "datasets") => StartAsync(directory, bucket, 0, null, null);

    /// <summary>A server on the same port, storage and account as <paramref name="previous"/> (killed before): as if it came back.</summary>
    public static Task<S3TestServer> RestartAsync(S3TestServer previous, string directory) =>
        StartAsync(directory, previous.Bucket, previous.Endpoint.Port, previous.AccessKey, previous.SecretKey);

    static async Task<S3TestServer> StartAsync(string directory, string bucket, int port, string? accessKey, string? secretKey)
    {
        Assert.True(Missing is null, $"the S3 test server cannot start: {Missing} ({SkipReason})");
        var psi = new ProcessStartInfo(Node!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { RepoFiles.PathOf("eng", "s3-server", "server.js"), "--directory", directory, "--address", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture), "--bucket", bucket })
            psi.ArgumentList.Add(a);
        accessKey ??= "AK" + Guid.NewGuid().ToString("N")[..18].ToUpperInvariant();
        secretKey ??= Convert.ToBase64String(Guid.NewGuid().ToByteArray()) + Guid.NewGuid().ToString("N");
        psi.Environment["S3_SERVER_ACCESS_KEY"] = accessKey;
        psi.Environment["S3_SERVER_SECRET_KEY"] = secretKey;
        var server = new S3TestServer(Process.Start(psi)!, bucket, accessKey, secretKey);
        void OnLine(string? line)
        {
            if (line is null) return;
            lock (server.log) server.log.Add(line);
            const string Marker = "s3-server: listening on ";
            if (line.StartsWith(Marker, StringComparison.Ordinal)) server.listening.TrySetResult(line[Marker.Length..]);
        }
        server.process.OutputDataReceived += (_, e) => OnLine(e.Data);
        server.process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        server.process.EnableRaisingEvents = true;
        server.process.Exited += (_, _) => server.listening.TrySetException(new InvalidOperationException(
            $"the S3 test server exited with status {server.process.ExitCode} before listening:\n{string.Join('\n', server.Log)}"));
        server.process.BeginOutputReadLine();
        server.process.BeginErrorReadLine();
        try
        {
            // Bounded by the process: it either prints its address or exits. The long cap only guards a hung Node.js.
            server.Endpoint = new Uri(await server.listening.Task.WaitAsync(TimeSpan.FromMinutes(3)));
        }
        catch
        {
            server.Dispose();
            throw;
        }
        return server;
    }

    /// <summary>The environment of a process that reads this server's datasets (a coordinator, a worker, the CLI): endpoint, region, keys and an S3 cache directory.</summary>
    public Dictionary<string, string?> ClientEnvironment(string cacheDirectory) => new()
    {
        ["DTRAIN_S3_ENDPOINT"] = Endpoint.ToString(), ["AWS_REGION"] = "us-east-1",
        ["AWS_ACCESS_KEY_ID"] = AccessKey, ["AWS_SECRET_ACCESS_KEY"] = SecretKey,
        ["DTRAIN_S3_CACHE_DIR"] = cacheDirectory,
    };

    /// <summary>Store options that reach this server with its credentials (or <paramref name="secretKey"/> instead), caching in <paramref name="cacheDirectory"/>.</summary>
    public S3StoreOptions Options(string cacheDirectory, string? accessKey = null, string? secretKey = null) => new()
    {
        Endpoint = Endpoint,
        Region = "us-east-1",
        Credentials = new BasicAWSCredentials(accessKey ?? AccessKey, secretKey ?? SecretKey),
        CacheDirectory = cacheDirectory,
        Retry = new StoreRetryPolicy { MaxAttempts = 3, BaseDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(100) },
    };

    /// <summary>How many logged requests contain all of <paramref name="parts"/>.</summary>
    public int Count(params string[] parts) => Log.Count(l => l.StartsWith("s3-server: ", StringComparison.Ordinal) && parts.All(p => l.Contains(p, StringComparison.Ordinal)));

    /// <summary>
    /// Waits until every request answered so far is in <see cref="Log"/>: sends an unsigned marker request (refused) and
    /// waits for its line, which the server logs after every earlier one. Bounded by the marker's line appearing.
    /// </summary>
    public async Task FlushLogAsync()
    {
        var marker = "/flush-" + Guid.NewGuid().ToString("N");
        using (var http = new HttpClient())
            (await http.GetAsync(new Uri(Endpoint, marker))).Dispose();
        for (var i = 0; Count(marker) == 0; i++)
        {
            Assert.True(i < 3000, $"the S3 test server never logged {marker}:\n{string.Join('\n', Log)}");
            await Task.Delay(10);
        }
    }

    /// <summary>Kills the server (as a crash or a network cut would look to a client).</summary>
    public void Kill()
    {
        try
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
            process.WaitForExit(30_000);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
    }

    public void Dispose()
    {
        Kill();
        process.Dispose();
    }
}

/// <summary>A test that needs the S3 test server: skipped without it, unless CI or DTRAIN_REQUIRE_S3=1 make that a failure.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class S3FactAttribute : FactAttribute
{
    public S3FactAttribute()
    {
        if (S3TestServer.Missing is not null && !S3TestServer.Required) Skip = S3TestServer.SkipReason;
    }
}
