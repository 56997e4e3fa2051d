using System.Collections.Concurrent;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Timeouts that were literals are options, validated with the key named, and the calls use them (seen in the
/// deadline the receiving server gets, or in the message of what gave up).
/// </summary>
public class OpsTimeoutOptionsTests
{
    [Fact]
    public void Coordinator_timeouts_are_validated_naming_the_key()
    {
        var errors = new CoordinatorOptions
        {
            FailureBlameGraceSeconds = -1, ReleaseTimeoutSeconds = 0, WorkerConnectTimeoutSeconds = double.NaN, KeepAlivePingSeconds = 1e9, MaxWorkers = -1,
        }.Validate();
        Assert.Contains("Coordinator:FailureBlameGraceSeconds -1 must be a number of seconds >= 0 and at most 86400", errors);
        Assert.Contains("Coordinator:ReleaseTimeoutSeconds 0 must be a number of seconds > 0 and at most 86400", errors);
        Assert.Contains("Coordinator:WorkerConnectTimeoutSeconds NaN must be a number of seconds > 0 and at most 86400", errors);
        Assert.Contains("Coordinator:KeepAlivePingSeconds 1000000000 must be a number of seconds > 0 and at most 86400", errors);
        Assert.Contains("Coordinator:MaxWorkers -1 must be in [0, 65536] (0 = no limit)", errors);
        Assert.Equal(5, errors.Count);
        Assert.Empty(new CoordinatorOptions { FailureBlameGraceSeconds = 0 }.Validate());
    }

    [Fact]
    public void Worker_timeouts_are_validated_naming_the_key()
    {
        var errors = new WorkerOptions { RingConnectTimeoutSeconds = 0, CoordinatorCallTimeoutSeconds = -5 }.Validate();
        Assert.Equal(
            ["Worker:RingConnectTimeoutSeconds 0 must be a number of seconds > 0 and at most 86400", "Worker:CoordinatorCallTimeoutSeconds -5 must be a number of seconds > 0 and at most 86400"],
            errors);
    }

    [Fact]
    public void Dtrain_serve_with_a_bad_timeout_exits_2_naming_it()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "serve", "--port", "0", "--data-dir", Path.Combine(tmp.Path, "c"), "--Coordinator:ReleaseTimeoutSeconds=0");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("Coordinator:ReleaseTimeoutSeconds 0 must be a number of seconds > 0", r.Stderr);
    }

    /// <summary>Records the deadline every call of the named methods arrives with (relative to when it arrived).</summary>
    sealed class Deadlines : Interceptor
    {
        public ConcurrentDictionary<string, TimeSpan> Seen { get; } = new();

        public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            Seen[context.Method[(context.Method.LastIndexOf('/') + 1)..]] = context.Deadline - DateTime.UtcNow;
            return continuation(request, context);
        }
    }

    [Fact]
    public async Task A_job_releases_its_workers_with_Coordinator_ReleaseTimeoutSeconds()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { ReleaseTimeoutSeconds = 600 });
        var deadlines = new Deadlines();
        await cluster.AddWorkerAsync(configure: b =>
        {
            b.Services.AddSingleton(deadlines);
            b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<Deadlines>());
        });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        tmp.Write("t.txt", TestJobs.Text(50));
        var spec = tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: 3)));
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(spec), 1)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        Assert.True(deadlines.Seen.TryGetValue("Release", out var release), string.Join(", ", deadlines.Seen.Keys));
        Assert.InRange(release.TotalSeconds, 500, 600);
    }

    [Fact]
    public async Task A_worker_calls_the_coordinator_with_Worker_CoordinatorCallTimeoutSeconds()
    {
        var deadlines = new Deadlines();
        await using var cluster = await InProcessCluster.StartAsync(0, services: s =>
        {
            s.AddSingleton(deadlines);
            s.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<Deadlines>());
        });
        await cluster.AddWorkerAsync(new WorkerOptions { CoordinatorCallTimeoutSeconds = 77 });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        Assert.InRange(deadlines.Seen["Register"].TotalSeconds, 60, 77);
        Assert.InRange(deadlines.Seen["Heartbeat"].TotalSeconds, 60, 77);
    }
}
