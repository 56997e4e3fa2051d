using System.Text.Json;
using Dtrain.Protos.Jobs;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Security;

/// <summary>Tokens, jobs and audit lines for the auth tests.</summary>
internal static class AuthTestSupport
{
    /// <summary>Creates a token in the cluster's data directory (the coordinator picks it up at the next call).</summary>
    public static (Jobs.JobsClient Client, string Token, TokenEntry Entry) Token(InProcessCluster cluster, string name, Role role)
    {
        var (entry, secret) = TokenStore.Create(cluster.DataDir, name, role, DateTimeOffset.UtcNow);
        return (cluster.ClientFor(secret), secret, entry);
    }

    /// <summary>A small language-model job submitted (its data uploaded) by <paramref name="client"/>.</summary>
    public static string SubmitLm(Jobs.JobsClient client, TempDir tmp, string name, int steps, int workers = 1)
    {
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: steps) with { Name = name };
        var path = tmp.Write($"{name}.json", JobSpecSerializer.Serialize(spec));
        return client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(client, new FileInfo(path), workers)).JobId;
    }

    public static RpcException Refused(Action call) => Assert.Throws<RpcException>(call);

    public static async Task<RpcException> RefusedAsync(Func<Task> call) => await Assert.ThrowsAsync<RpcException>(call);

    /// <summary>Drains a server stream (Watch, Download).</summary>
    public static async Task<int> Drain<T>(AsyncServerStreamingCall<T> call)
    {
        var n = 0;
        while (await call.ResponseStream.MoveNext(CancellationToken.None)) n++;
        return n;
    }

    /// <summary>Every line of DATA_DIR/audit.log, parsed (each must be one JSON object).</summary>
    public static List<JsonElement> Audit(string dataDir)
    {
        var path = Path.Combine(dataDir, AuditLog.FileName);
        if (!File.Exists(path)) return [];
        return [.. File.ReadAllLines(path).Where(l => l.Length > 0).Select(l => JsonDocument.Parse(l).RootElement.Clone())];
    }

    public static string? Field(this JsonElement line, string name) =>
        line.TryGetProperty(name, out var v) ? v.ValueKind == JsonValueKind.String ? v.GetString() : v.GetRawText() : null;

    /// <summary>The audit lines of <paramref name="event"/> whose fields include every given pair.</summary>
    public static List<JsonElement> Lines(string dataDir, string @event, params (string Key, string Value)[] fields) =>
        [.. Audit(dataDir).Where(l => l.Field("event") == @event && fields.All(f => l.Field(f.Key) == f.Value))];

    /// <summary>Waits (bounded, generous) for an audit line that an asynchronous event writes, e.g. a worker leaving.</summary>
    public static async Task<JsonElement> WaitForLine(string dataDir, string @event, params (string Key, string Value)[] fields)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            if (Lines(dataDir, @event, fields).FirstOrDefault() is { ValueKind: JsonValueKind.Object } line) return line;
            Assert.True(DateTime.UtcNow < deadline, $"no audit line {@event} with {string.Join(", ", fields)} in:\n{string.Join('\n', Audit(dataDir))}");
            await Task.Delay(50);
        }
    }
}
