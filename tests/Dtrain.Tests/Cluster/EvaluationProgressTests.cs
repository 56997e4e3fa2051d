using System.Diagnostics;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A data-parallel job's evaluation over real gRPC is bounded by its progress, not by the clock: the worker reports the
/// batches done while it evaluates, and the coordinator fails the evaluation only when none arrived for
/// Coordinator:CallTimeoutSeconds. A long evaluation that advances ends the job; one that stops advancing fails it
/// naming the worker and the step.
/// </summary>
public class EvaluationProgressTests
{
    const double CallTimeout = 5;

    /// <summary>A char LM whose validation split (10 % of 28,800 characters) is ~44 batches of 4 × 16.</summary>
    static async Task<(InProcessCluster Cluster, string JobId, TempDir Dir)> StartAsync(EvaluationProbe probe)
    {
        var options = new CoordinatorOptions { CallTimeoutSeconds = CallTimeout, HeartbeatIntervalMs = 1000, WorkerTimeoutSeconds = 60 };
        var cluster = await InProcessCluster.StartAsync(0, options);
        await cluster.AddWorkerAsync(configure: b => b.Services.AddSingleton(probe));
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(600));
        var spec = tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 3)));
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(spec), 1)).JobId;
        return (cluster, id, tmp);
    }

    [Fact]
    public async Task An_evaluation_longer_than_the_call_timeout_that_keeps_advancing_ends_the_job()
    {
        // Each batch is held a quarter of a second: ~44 batches take ~11 s, over twice the 5 s call timeout, while
        // the worker reports progress every second.
        var clock = new Stopwatch();
        long batches = 0;
        var probe = new EvaluationProbe
        {
            AfterBatch = (done, cancel) =>
            {
                if (done == 1) clock.Start();
                batches = done;
                cancel.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(250));
            },
        };
        var (cluster, id, tmp) = await StartAsync(probe);
        await using var _ = cluster;
        using var __ = tmp;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));

        Assert.True(info.State == JobState.Succeeded, info.Message);
        Assert.True(batches >= 40, $"{batches} batches evaluated");
        Assert.True(clock.Elapsed.TotalSeconds > 2 * CallTimeout, $"the evaluation took {clock.Elapsed.TotalSeconds:F1}s, not over twice the call timeout");
        Assert.InRange(info.LastEval.Count, (batches - 1) * 4 * 16 + 1, batches * 4 * 16);
        Assert.True(double.IsFinite(info.LastEval.Loss));
    }

    [Fact]
    public async Task An_evaluation_that_stops_advancing_fails_the_job_naming_the_worker_and_the_step()
    {
        // The evaluation stops at its third batch until the call is cancelled (the worker keeps heart-beating).
        var cancelled = new TaskCompletionSource();
        var probe = new EvaluationProbe
        {
            AfterBatch = (done, cancel) =>
            {
                if (done != 3) return;
                cancel.WaitHandle.WaitOne();
                cancelled.TrySetResult();
            },
        };
        var (cluster, id, tmp) = await StartAsync(probe);
        await using var _ = cluster;
        using var __ = tmp;
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));

        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"worker {worker.WorkerId} ({worker.Address}) made no progress in evaluate at step 3 for 5s after", info.Message);
        Assert.Contains("(hung or overloaded)", info.Message);
        Assert.DoesNotContain("no heartbeat", info.Message);
        // The coordinator's cancellation reached the worker's evaluation, which stopped.
        await cancelled.Task.WaitAsync(TimeSpan.FromSeconds(60));
    }
}
