using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A worker that dies while the job is first assigned (before any step) on real in-process gRPC workers: an elastic job
/// is assigned again without it in a new generation and finishes; a fixed-size job (min = max) waits for a replacement.
/// </summary>
public class InitialAssignTests
{
    /// <summary>Tells the test that the worker is being assigned.</summary>
    sealed class Death
    {
        public TaskCompletionSource Assigning { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>The worker's Assign fails as a dead peer's call does (the test then stops the worker: no more heartbeats, no re-registering).</summary>
    sealed class DiesOnAssign(Death death) : Interceptor
    {
        public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is not AssignRequest) return continuation(request, context);
            death.Assigning.TrySetResult();
            throw new RpcException(new Status(StatusCode.Unavailable, "connection reset (the worker died during Assign)"));
        }
    }

    /// <summary>How many Assign calls the worker refused.</summary>
    sealed class Refusals
    {
        private int count;
        public int Count => Volatile.Read(ref count);
        public void Add() => Interlocked.Increment(ref count);
    }

    /// <summary>The worker's Assign always fails as an unreachable worker's does, while the worker lives on: it heartbeats, and registers again once marked lost.</summary>
    sealed class AlwaysFailsAssign(Refusals refusals) : Interceptor
    {
        public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is not AssignRequest) return continuation(request, context);
            refusals.Add();
            throw new RpcException(new Status(StatusCode.Unavailable, $"connection reset (refusal {refusals.Count})"));
        }
    }

    const int Steps = 12;

    /// <summary>Two workers and a third (index 2, "test-3") that dies during its first Assign; the returned task stops it then.</summary>
    static async Task<(InProcessCluster Cluster, string Culprit, Task Died)> StartAsync(CoordinatorOptions options)
    {
        var cluster = await InProcessCluster.StartAsync(2, options);
        var death = new Death();
        await cluster.AddWorkerAsync(configure: b =>
        {
            b.Services.AddSingleton(death);
            b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<DiesOnAssign>());
        });
        await cluster.WaitForIdleAsync(3, TimeSpan.FromSeconds(30));
        var culprit = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == "test-3").WorkerId;
        var died = death.Assigning.Task.ContinueWith(_ => cluster.StopWorkerAsync(2), TaskScheduler.Default).Unwrap();
        return (cluster, culprit, died);
    }

    static string Submit(InProcessCluster cluster, TempDir tmp, int min, int max, int workers = 3)
    {
        tmp.Write("t.txt", TestJobs.Text(100));
        var spec = TestJobs.CharLm("t.txt", steps: Steps);
        spec = spec with { Training = spec.Training with { BatchSize = 6, EvalInterval = 0, CheckpointInterval = 0 } };
        var request = JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("job.json", JobSpecSerializer.Serialize(spec))), workers);
        request.MinWorkers = min;
        request.MaxWorkers = max;
        return cluster.Client.Submit(request).JobId;
    }

    static async Task<List<string>> LogsAsync(InProcessCluster cluster, string id)
    {
        using var call = cluster.Client.Watch(new WatchJobRequest { JobId = id });
        var logs = new List<string>();
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
            if (call.ResponseStream.Current.KindCase == JobEvent.KindOneofCase.Log) logs.Add(call.ResponseStream.Current.Log);
        return logs;
    }

    static async Task<JobInfo> WaitForEndAsync(InProcessCluster cluster, string id)
    {
        var deadline = DateTime.UtcNow.AddMinutes(3);
        while (true)
        {
            var info = cluster.Client.Get(new GetJobRequest { JobId = id });
            if (info.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled) return info;
            Assert.True(DateTime.UtcNow < deadline, $"job {id} still {info.State}: {info.Message}; log: {string.Join(" | ", Logs(cluster, id).TakeLast(10))}");
            await Task.Delay(100);
        }
    }

    static List<string> Logs(InProcessCluster cluster, string id)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        using var call = cluster.Client.Watch(new WatchJobRequest { JobId = id }, cancellationToken: cts.Token);
        var logs = new List<string>();
        try
        {
            while (call.ResponseStream.MoveNext(cts.Token).GetAwaiter().GetResult())
                if (call.ResponseStream.Current.KindCase == JobEvent.KindOneofCase.Log) logs.Add(call.ResponseStream.Current.Log);
        }
        catch (RpcException) { }
        return logs;
    }

    [Fact]
    public async Task An_elastic_job_whose_worker_dies_during_the_first_assign_is_assigned_again_without_it_and_finishes()
    {
        var (cluster, culprit, died) = await StartAsync(new CoordinatorOptions());
        await using var _ = cluster;
        using var tmp = new TempDir();
        var id = Submit(cluster, tmp, min: 1, max: 3);
        var info = await WaitForEndAsync(cluster, id);
        await died;

        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(Steps, info.Step);
        Assert.Equal(2, info.WorkerIds.Count);
        Assert.DoesNotContain(culprit, info.WorkerIds);
        Assert.True(info.Generation >= 2, $"generation {info.Generation}");
        var logs = await LogsAsync(cluster, id);
        Assert.Contains(logs, l => l.Contains("the assignment failed before step 0", StringComparison.Ordinal) && l.Contains(culprit, StringComparison.Ordinal));
        var problems = SampleLedger.Check(ProtoMapper.FromProto(cluster.Client.Ledger(new GetJobRequest { JobId = id })), 0, Steps);
        Assert.True(problems.Count == 0, string.Join("; ", problems));
    }

    [Fact]
    public async Task A_fixed_size_job_whose_worker_dies_during_the_first_assign_waits_for_a_replacement_and_then_finishes()
    {
        var (cluster, culprit, died) = await StartAsync(new CoordinatorOptions { WaitForWorkersSeconds = 120 });
        await using var _ = cluster;
        using var tmp = new TempDir();
        var id = Submit(cluster, tmp, min: 3, max: 3);

        var deadline = DateTime.UtcNow.AddMinutes(2);
        JobInfo waiting;
        while ((waiting = cluster.Client.Get(new GetJobRequest { JobId = id })).State != JobState.Waiting)
        {
            Assert.True(waiting.State is JobState.Queued or JobState.Preparing or JobState.Running, $"{waiting.State}: {waiting.Message}");
            Assert.True(DateTime.UtcNow < deadline, "the job never waited for a replacement");
            await Task.Delay(50);
        }
        Assert.Contains("waiting for 1 more worker(s)", waiting.Message);
        await died;
        await cluster.AddWorkerAsync();
        var info = await WaitForEndAsync(cluster, id);

        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(3, info.WorkerIds.Count);
        Assert.DoesNotContain(culprit, info.WorkerIds);
        Assert.Contains("test-4", cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Where(w => info.WorkerIds.Contains(w.WorkerId)).Select(w => w.Name));
    }

    [Fact]
    public async Task A_fixed_size_job_without_a_replacement_fails_after_the_wait_naming_the_dead_worker()
    {
        var (cluster, culprit, died) = await StartAsync(new CoordinatorOptions { WaitForWorkersSeconds = 1 });
        await using var _ = cluster;
        using var tmp = new TempDir();
        var id = Submit(cluster, tmp, min: 3, max: 3);
        var info = await WaitForEndAsync(cluster, id);
        await died;

        Assert.Equal(JobState.Failed, info.State);
        Assert.Equal(0, info.Step);
        Assert.Contains("fewer than the minimum of 3 worker(s)", info.Message);
        Assert.True(info.Message.Contains(culprit, StringComparison.Ordinal), info.Message);
    }

    [Fact]
    public async Task A_job_whose_first_assign_keeps_failing_fails_after_AssignAttempts_naming_the_worker_and_its_last_error()
    {
        // One worker that refuses every Assign but lives on: each attempt marks it lost, it registers again, the job
        // (waiting for its minimum of 1) takes it back and tries again — without a limit, for ever.
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { AssignAttempts = 3, AssignBackoffSeconds = 0.1, WaitForWorkersSeconds = 120 });
        var refusals = new Refusals();
        await cluster.AddWorkerAsync(configure: b =>
        {
            b.Services.AddSingleton(refusals);
            b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<AlwaysFailsAssign>());
        });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        using var tmp = new TempDir();
        var id = Submit(cluster, tmp, min: 1, max: 1, workers: 1);
        var info = await WaitForEndAsync(cluster, id);

        Assert.Equal(JobState.Failed, info.State);
        Assert.Equal(0, info.Step);
        Assert.Equal(3, refusals.Count);
        Assert.StartsWith("assigning the job's workers failed 3 time(s) before step 0 (Coordinator:AssignAttempts = 3); the last attempt: ", info.Message);
        // The worker by the id it had at the last attempt (its third registration) and its last error.
        Assert.Matches(@"the last attempt: worker w3 \([^)]+\) unreachable during assign at step 0: connection reset \(refusal 3\)$", info.Message);
        var logs = await LogsAsync(cluster, id);
        Assert.Equal(2, logs.Count(l => l.Contains("the assignment failed before step 0", StringComparison.Ordinal) && l.Contains("assigning again", StringComparison.Ordinal)));
        Assert.Contains(logs, l => l.Contains("(attempt 2 of 3)", StringComparison.Ordinal));
    }

    [Fact]
    public void AssignAttempts_and_AssignBackoffSeconds_are_validated_naming_the_key()
    {
        var errors = new CoordinatorOptions { AssignAttempts = 0, AssignBackoffSeconds = -1 }.Validate();
        Assert.Equal(["Coordinator:AssignAttempts 0 must be >= 1", "Coordinator:AssignBackoffSeconds -1 must be a number of seconds >= 0 and at most 86400"], errors);
        Assert.Empty(new CoordinatorOptions { AssignAttempts = 1, AssignBackoffSeconds = 0 }.Validate());
        Assert.Equal((5, 0.5), (new CoordinatorOptions().AssignAttempts, new CoordinatorOptions().AssignBackoffSeconds));
    }
}
