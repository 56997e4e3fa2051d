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
/// The step-timeout path: a worker that stays registered and keeps heart-beating, but whose step never finishes (a
/// deadlock in its step, a stuck device), fails the job after Coordinator:StepTimeoutSeconds naming it and the step.
/// </summary>
public class StepTimeoutTests
{
    /// <summary>Holds every RunStep from <paramref name="from"/> on until the caller gives up: the step hangs, the rest of the worker (heartbeats, other calls) runs on.</summary>
    sealed class HangingStep(long from) : Interceptor
    {
        public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
        {
            if (request is RunStepRequest step && step.Step >= from)
                await Task.Delay(Timeout.Infinite, context.CancellationToken);
            return await continuation(request, context);
        }
    }

    [Fact]
    public async Task A_worker_that_heartbeats_but_never_finishes_its_step_fails_the_job_with_the_step_timeout()
    {
        // Heartbeats every second, lost only after 30 s without one; a step may take 2 s (4 s while queued behind another).
        var options = new CoordinatorOptions { HeartbeatIntervalMs = 1000, WorkerTimeoutSeconds = 30, StepTimeoutSeconds = 2 };
        await using var cluster = await InProcessCluster.StartAsync(0, options);
        await cluster.AddWorkerAsync(configure: b => b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<HangingStep>(3L)));
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();

        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(100));
        var spec = tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 1000)));
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(spec), 1)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));

        Assert.Equal(JobState.Failed, info.State);
        Assert.Equal(3, info.Step);
        Assert.Contains($"worker {worker.WorkerId} ({worker.Address}) did not finish step at step 3 within", info.Message);
        Assert.Contains("(hung or overloaded)", info.Message);
        // The step timeout fired, not the heartbeat check: the worker kept heart-beating through the hang. (The
        // coordinator then drops it as unresponsive; the live process registers again and takes the next job.)
        Assert.DoesNotContain("no heartbeat", info.Message);
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        Assert.Equal(worker.Name, cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.State == WorkerState.Idle).Name);
    }
}
