using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// The queue policy on a real coordinator and real workers: what can never run is refused at submit; a later job runs
/// ahead of a head job that waits for workers to register (backfill); once the cluster can give the head its workers,
/// nothing overtakes it and running elastic jobs do not grow onto the idle workers it waits for.
/// </summary>
public class OpsQueueTests
{
    static string Spec(TempDir tmp, string name, int steps, Func<JobSpec, JobSpec>? change = null)
    {
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm(Path.Combine(tmp.Path, "t.txt"), steps: steps) with { Name = name };
        spec = spec with { Training = spec.Training with { BatchSize = 12, LmSampling = LmSamplingKinds.Random } };
        return tmp.Write(name + ".json", JobSpecSerializer.Serialize(change is null ? spec : change(spec)));
    }

    static string Submit(InProcessCluster cluster, string path, int workers, int maxWorkers = 0)
    {
        var request = JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), workers);
        request.MaxWorkers = maxWorkers;
        return cluster.Client.Submit(request).JobId;
    }

    static JobInfo Get(InProcessCluster cluster, string id) => cluster.Client.Get(new GetJobRequest { JobId = id });

    static async Task<JobInfo> Until(InProcessCluster cluster, string id, Func<JobInfo, bool> done, string what, int seconds = 120)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            var info = Get(cluster, id);
            if (done(info)) return info;
            Assert.True(DateTime.UtcNow < deadline, $"{what}: job {id} is {info.State} at step {info.Step}: {info.Message}");
            await Task.Delay(20);
        }
    }

    [Fact]
    public void Idle_workers_are_held_for_the_head_only_once_the_cluster_can_give_it_its_workers_and_a_job_below_its_minimum_may_still_take_them()
    {
        var registry = new WorkerRegistry(new CoordinatorOptions(), TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<WorkerRegistry>.Instance);
        for (var i = 0; i < 3; i++)
        {
            var w = registry.Register(new Dtrain.Cluster.WorkerRegistration($"http://10.0.0.{i + 1}:7000", "", Dtrain.Cluster.WorkerCapabilities.Unknown));
            registry.Heartbeat(w.Id, w.Token);
        }
        Assert.NotNull(registry.TryReserve(1, "job-0001"));
        registry.HoldForQueue(4); // 3 can take jobs, the head needs 4: nothing is held, a running job may grow
        Assert.Equal(new ClusterCapacity(Idle: 2, Free: 2, Schedulable: 3, Cordoned: 0, Live: 3), registry.Capacity());
        registry.HoldForQueue(3); // enough for the head once job-0001 ends: both idle workers are held
        Assert.Equal(0, registry.FreeCount());
        Assert.Empty(registry.TryReserveUpTo(2, "job-0001"));
        Assert.Single(registry.TryReserveUpTo(2, "job-0001", needed: 1)); // to get back to its minimum
        registry.Cordon("w3", drain: false, "test"); // a cordoned worker cannot take jobs: the head can no longer start
        Assert.Equal(new ClusterCapacity(Idle: 0, Free: 0, Schedulable: 2, Cordoned: 1, Live: 3), registry.Capacity());
    }

    [Fact]
    public async Task What_can_never_run_is_refused_at_submit_naming_the_limit_or_the_field()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { MaxWorkers = 2 });
        var path = Spec(tmp, "lm", 5);

        var tooMany = Assert.Throws<RpcException>(() => Submit(cluster, path, 3));
        Assert.Equal(StatusCode.InvalidArgument, tooMany.StatusCode);
        Assert.Equal("the job needs 3 workers, but the cluster has at most Coordinator:MaxWorkers = 2 workers: it could never start", tooMany.Status.Detail);
        var grows = Assert.Throws<RpcException>(() => Submit(cluster, path, 1, maxWorkers: 5));
        Assert.Contains("max_workers 5 is more than any job may have: the cluster has at most Coordinator:MaxWorkers = 2 workers", grows.Status.Detail);

        // A pipeline runs on exactly D × K workers.
        var pipeline = Spec(tmp, "pipe", 5, s => s with { Parallelism = new ParallelismSpec { Data = 1, Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } } });
        var odd = Assert.Throws<RpcException>(() => Submit(cluster, pipeline, 1));
        Assert.Equal(StatusCode.InvalidArgument, odd.StatusCode);
        Assert.Contains("$.parallelism.data: 1 replica(s) × 2 pipeline stages run on exactly 2 workers, but --workers is 1", odd.Status.Detail);
        var open = Spec(tmp, "pipe0", 5, s => s with { Parallelism = new ParallelismSpec { Data = 0, Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } } });
        var unset = Assert.Throws<RpcException>(() => Submit(cluster, open, 0));
        Assert.Contains("$.parallelism.pipeline.stages: a pipeline of 2 stages with parallelism.data 0 (replicas = workers / stages) needs --workers set to a multiple of 2; it is 0", unset.Status.Detail);

        // The CLI: bad input, exit status 2, the coordinator's message.
        var cli = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken },
            "submit", path, "--workers", "3", "--coordinator", cluster.Address);
        Assert.True(cli.ExitCode == 2, cli.ToString());
        Assert.Contains("it could never start", cli.Stderr);
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
    }

    [Fact]
    public async Task A_head_job_waiting_for_a_third_worker_lets_a_one_worker_job_run_and_starts_when_the_third_joins()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        var head = Submit(cluster, Spec(tmp, "big", 20), 3);
        var small = Submit(cluster, Spec(tmp, "small", 20), 1);

        var done = await Until(cluster, small, i => i.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled, "the small job never ran");
        Assert.True(done.State == JobState.Succeeded, $"{done.State}: {done.Message}");
        // Once the small job has released its worker, the head's message says why it still waits.
        const string why = "waiting for 3 idle worker(s); 2 idle, 2 can take jobs (2 registered); it starts once 1 more register (smaller jobs behind it may run meanwhile)";
        var waiting = await Until(cluster, head, i => i.Message == why, "the head does not say why it waits", 30);
        Assert.Equal(JobState.Queued, waiting.State);
        var list = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken }, "list", "--coordinator", cluster.Address);
        Assert.Matches($@"│\s*{head}\s*│.*│\s*queued\s*│.*│\s*{System.Text.RegularExpressions.Regex.Escape(waiting.Message)}\s*│", list.Stdout);
        var status = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken }, "status", head, "--coordinator", cluster.Address);
        Assert.StartsWith($"{head} big (language_model): queued - {waiting.Message}", status.Stdout);
        var watch = cluster.Client.Watch(new WatchJobRequest { JobId = small });
        var events = new List<JobEvent>();
        while (await watch.ResponseStream.MoveNext(CancellationToken.None)) events.Add(watch.ResponseStream.Current);
        Assert.Contains(events, e => e.Log == $"started ahead of {head}, which waits for 3 workers while fewer can take jobs (backfill)");

        await cluster.AddWorkerAsync();
        var info = await cluster.WaitAsync(head, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(3, info.WorkerIds.Count);
    }

    [Fact]
    public async Task Once_the_cluster_can_give_the_head_its_workers_nothing_overtakes_it_and_running_jobs_do_not_grow_onto_them()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        // A long elastic job on 1 worker that may grow to 3.
        var running = Submit(cluster, Spec(tmp, "long", 100_000), 1, maxWorkers: 3);
        await Until(cluster, running, i => i.Step >= 5, "the long job never ran");
        var head = Submit(cluster, Spec(tmp, "big", 20), 3);
        await Until(cluster, head, i => i.Message.Contains("it starts once 1 more register", StringComparison.Ordinal), "the head never said it waits for a registration");

        // A third worker: now the head only waits for the running job; the idle workers are held for it.
        await cluster.AddWorkerAsync();
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
        await Until(cluster, head, i => i.Message == "waiting for 3 idle worker(s); 2 idle, 3 can take jobs (3 registered); it starts when running jobs release them (jobs behind it wait)",
            "the head's message did not change", 30);
        var later = Submit(cluster, Spec(tmp, "small", 20), 1);
        var step = Get(cluster, running).Step;
        await Until(cluster, running, i => i.Step >= step + 40, "the long job stopped");
        var grew = Get(cluster, running);
        Assert.Equal((1, 1), (grew.Generation, grew.WorkerIds.Count)); // it did not take the idle workers
        var behind = Get(cluster, later);
        Assert.Equal(JobState.Queued, behind.State);
        Assert.Equal($"queued behind {head}, which waits for 3 idle workers: starting this job first would delay it", behind.Message);

        // The running job ends: the head goes first, then the one behind it.
        cluster.Client.Cancel(new CancelJobRequest { JobId = running });
        var headInfo = await cluster.WaitAsync(head, TimeSpan.FromMinutes(2));
        Assert.True(headInfo.State == JobState.Succeeded, $"{headInfo.State}: {headInfo.Message}");
        var laterInfo = await cluster.WaitAsync(later, TimeSpan.FromMinutes(2));
        Assert.True(laterInfo.State == JobState.Succeeded, $"{laterInfo.State}: {laterInfo.Message}");
        Assert.True(laterInfo.StartedUnixMs >= headInfo.StartedUnixMs, $"{later} started before {head}");
    }
}
