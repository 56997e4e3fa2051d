using System.Collections.Concurrent;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Tests.Support;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Security;

/// <summary>Coordinator:Auth = auto | on | off, and what the coordinator does with a broken tokens file.</summary>
public class AuthModeTests
{
    /// <summary>A coordinator without workers on a real port, its log lines from the Dtrain categories collected.</summary>
    sealed class Coordinator : IAsyncDisposable
    {
        private readonly WebApplication app;
        private readonly GrpcChannel channel;
        public Logs Logs { get; } = new();
        public string Address { get; }
        public string DataDir { get; }

        public Coordinator(string dataDir, CoordinatorOptions options)
        {
            DataDir = dataDir;
            app = CoordinatorHost.Build(options with { Port = 0, DataDir = dataDir }, l =>
            {
                l.SetMinimumLevel(LogLevel.Warning);
                l.AddProvider(Logs);
                l.AddFilter<Logs>("Dtrain", LogLevel.Information);
            });
            app.StartAsync().GetAwaiter().GetResult();
            Address = CoordinatorHost.Address(app);
            channel = GrpcChannel.ForAddress(Address);
        }

        public Jobs.JobsClient Client(string? token = null) => token is null
            ? new Jobs.JobsClient(channel)
            : new Jobs.JobsClient(channel.Intercept(m => { m.Add("authorization", "Bearer " + token); return m; }));

        public async ValueTask DisposeAsync()
        {
            await app.StopAsync();
            await app.DisposeAsync();
            channel.Dispose();
        }
    }

    internal sealed class Logs : ILoggerProvider
    {
        public ConcurrentQueue<(string Category, LogLevel Level, string Message)> Entries { get; } = new();
        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);
        public void Dispose() { }

        sealed class Logger(Logs owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Entries.Enqueue((category, logLevel, formatter(state, exception)));
        }
    }

    [Fact]
    public async Task Auto_on_loopback_is_open_with_a_loud_warning_until_the_first_token_is_created_then_needs_one()
    {
        using var tmp = new TempDir();
        await using var c = new Coordinator(tmp.Path, new CoordinatorOptions());
        Assert.Empty(c.Client().List(new ListJobsRequest()).Jobs);
        Assert.Contains(c.Logs.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains("AUTH IS OFF (Coordinator:Auth=auto, listening on 127.0.0.1 only and no tokens created)"));

        var (entry, secret) = TokenStore.Create(tmp.Path, "ops", Role.Admin, DateTimeOffset.UtcNow);
        var e = Assert.Throws<RpcException>(() => c.Client().List(new ListJobsRequest()));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Empty(c.Client(secret).List(new ListJobsRequest()).Jobs);
        Assert.Contains(c.Logs.Entries, l => l.Message.Contains("auth changed: auth on (Coordinator:Auth=auto, " + TokenStore.PathIn(tmp.Path) + " has tokens)"));
        // Audit lines also go to the logger category Dtrain.Audit.
        Assert.Contains(c.Logs.Entries, l => l.Category == AuditLog.Category && l.Message.Contains("\"event\":\"token.use\"") && l.Message.Contains(entry.Id));
    }

    [Fact]
    public async Task Auto_beyond_loopback_needs_a_token_even_before_one_exists_and_says_how_to_create_one()
    {
        using var tmp = new TempDir();
        await using var c = new Coordinator(tmp.Path, new CoordinatorOptions { Listen = "0.0.0.0", Tls = new Dtrain.Rpc.TlsSettings { Insecure = true } });
        var e = Assert.Throws<RpcException>(() => c.Client().ListWorkers(new ListWorkersRequest()));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Contains("no token exists yet: on the coordinator's host run `dtrain tokens create --role admin --name NAME --data-dir DIR`, DIR being the coordinator's data directory (Coordinator:DataDir)", e.Status.Detail);
        Assert.DoesNotContain(tmp.Path, e.Status.Detail);
        Assert.Contains(c.Logs.Entries, l => l.Level == LogLevel.Warning && l.Message.Contains("auth on (Coordinator:Auth=auto, listening on 0.0.0.0) and no active token exists"));
    }

    [Fact]
    public async Task Auth_on_needs_a_token_on_loopback_and_auth_off_ignores_existing_tokens()
    {
        using (var tmp = new TempDir())
        await using (var on = new Coordinator(tmp.Path, new CoordinatorOptions { Auth = "on" }))
        {
            Assert.Equal(StatusCode.Unauthenticated, Assert.Throws<RpcException>(() => on.Client().List(new ListJobsRequest())).StatusCode);
        }
        using (var tmp = new TempDir())
        {
            TokenStore.Create(tmp.Path, "ops", Role.Admin, DateTimeOffset.UtcNow);
            await using var off = new Coordinator(tmp.Path, new CoordinatorOptions { Auth = "off" });
            tmp.Write("t.txt", TestJobs.Text());
            var id = AuthTestSupport.SubmitLm(off.Client(), tmp, "anon", 2);
            // Nobody owns a job submitted while auth is off; the audit log says auth was off.
            Assert.Equal("", off.Client().Get(new GetJobRequest { JobId = id }).Owner);
            Assert.Equal("off", Assert.Single(AuthTestSupport.Lines(tmp.Path, "job.submit", ("job", id))).Field("auth"));
            Assert.Contains(off.Logs.Entries, l => l.Level == LogLevel.Warning && l.Message.Contains("AUTH IS OFF (Coordinator:Auth=off)"));
            off.Client().Cancel(new CancelJobRequest { JobId = id });
        }
    }

    [Fact]
    public async Task A_bad_auth_option_or_tokens_file_stops_the_coordinator_naming_it_and_a_file_broken_while_running_refuses_every_call()
    {
        Assert.Contains("Coordinator:Auth \"maybe\" must be auto, on or off", Assert.Throws<ArgumentException>(() => CoordinatorHost.Build(new CoordinatorOptions { Auth = "maybe" })).Message);

        using var tmp = new TempDir();
        var path = TokenStore.PathIn(tmp.Path);
        File.WriteAllText(path, """{"version": 1, "tokens": [{"id": "tok-1", "name": "x", "role": "boss", "sha256": "00", "created": "2025-01-01T00:00:00Z"}]}""");
        File.SetUnixFileMode(path, SecureFiles.OwnerOnly);
        var bad = Assert.Throws<InvalidDataException>(() => CoordinatorHost.Build(new CoordinatorOptions { Port = 0, DataDir = tmp.Path }));
        Assert.Contains($"tokens file {path}: $.tokens[0]: role \"boss\"", bad.Message);

        File.Delete(path);
        TokenStore.Create(tmp.Path, "ops", Role.Admin, DateTimeOffset.UtcNow);
        File.SetUnixFileMode(path, SecureFiles.OwnerOnly | UnixFileMode.GroupWrite | UnixFileMode.GroupRead);
        var writable = Assert.Throws<InvalidDataException>(() => CoordinatorHost.Build(new CoordinatorOptions { Port = 0, DataDir = tmp.Path }));
        Assert.Contains($"chmod 600 {path}", writable.Message);

        File.SetUnixFileMode(path, SecureFiles.OwnerOnly);
        var secret = TokenStore.Create(tmp.Path, "ops2", Role.Admin, DateTimeOffset.UtcNow).Secret;
        await using var c = new Coordinator(tmp.Path, new CoordinatorOptions());
        Assert.Empty(c.Client(secret).List(new ListJobsRequest()).Jobs);
        File.WriteAllText(path + ".new", "{ not json");
        File.SetUnixFileMode(path + ".new", SecureFiles.OwnerOnly);
        File.Move(path + ".new", path, overwrite: true);
        // Fail closed: the good token of a moment ago is refused too, with the file and the problem named.
        var e = Assert.Throws<RpcException>(() => c.Client(secret).List(new ListJobsRequest()));
        Assert.Equal(StatusCode.Internal, e.StatusCode);
        // Named as a client may see it: relative to the coordinator's data directory.
        Assert.Contains($"tokens file {Path.GetFileName(path)} is invalid", e.Status.Detail);
        Assert.DoesNotContain(tmp.Path, e.Status.Detail);
    }
}
