using Dtrain.Cluster;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// The queue policy on its own (<see cref="JobQueue"/> over a real registry, no jobs run): submission order, backfilling
/// only while the head waits for workers to register, idle workers held for a head that only waits for running jobs,
/// restarts before the queue, and the waiting message of each job.
/// </summary>
public class JobQueueTests
{
    sealed class Cluster
    {
        public readonly CoordinatorOptions Options = new() { WorkerTimeoutSeconds = 3600 };
        public readonly WorkerRegistry Registry;
        public readonly JobQueue Queue;
        public readonly List<(string Job, int Workers)> Started = [];

        public Cluster(int workers)
        {
            Registry = new WorkerRegistry(Options, TimeProvider.System, NullLogger<WorkerRegistry>.Instance);
            Queue = new JobQueue(Options, Registry, NullLogger.Instance);
            for (var i = 0; i < workers; i++) Add($"node-{i}");
        }

        public void Add(string name)
        {
            var w = Registry.Register(new WorkerRegistration(InMemoryWorkerPool.AddressOf(name), name, WorkerCapabilities.Unknown with { Cores = 1 }));
            Assert.True(Registry.Heartbeat(w.Id, w.Token));
        }

        public void Schedule() => Queue.Schedule((job, workers) =>
        {
            Assert.All(workers, w => Assert.Equal(job.Id, w.JobId));
            Started.Add((job.Id, workers.Count));
        });
    }

    static JobRecord Job(int number, int workers)
    {
        var spec = TestJobs.CharLm("t.txt", steps: 3);
        var id = $"job-{number:D4}";
        return new JobRecord(id, spec, Path.Combine(Path.GetTempPath(), "dtrain-queue-test", id), workers, DateTimeOffset.UtcNow);
    }

    [Fact]
    public void Jobs_start_in_submission_order_while_workers_last()
    {
        var c = new Cluster(4);
        foreach (var (n, w) in new[] { (1, 2), (2, 1), (3, 1), (4, 1) }) c.Queue.Enqueue(Job(n, w));

        c.Schedule();

        Assert.Equal([("job-0001", 2), ("job-0002", 1), ("job-0003", 1)], c.Started);
        // The fourth waits at the head, for workers that running jobs hold; nothing is started twice.
        c.Schedule();
        Assert.Equal(3, c.Started.Count);
    }

    [Fact]
    public void While_the_head_waits_for_workers_to_register_smaller_jobs_behind_it_start_on_idle_workers()
    {
        var c = new Cluster(2);
        var head = Job(1, 3);
        c.Queue.Enqueue(head);
        c.Queue.Enqueue(Job(2, 1));
        c.Queue.Enqueue(Job(3, 2));
        c.Queue.Enqueue(Job(4, 1));

        c.Schedule();

        // Backfilled in order: job 2 on one idle worker, job 3 does not fit on the other, job 4 does.
        Assert.Equal([("job-0002", 1), ("job-0004", 1)], c.Started);
        Assert.Equal("waiting for 3 idle worker(s); 2 idle, 2 can take jobs (2 registered); it starts once 1 more register (smaller jobs behind it may run meanwhile)", head.Progress.Message);

        // A third worker registers: the head still cannot start (two are busy), but no job overtakes it any more.
        c.Add("node-2");
        c.Queue.Enqueue(Job(5, 1));
        c.Schedule();
        Assert.Equal(2, c.Started.Count);
        Assert.Equal("waiting for 3 idle worker(s); 1 idle, 3 can take jobs (3 registered); it starts when running jobs release them (jobs behind it wait)", head.Progress.Message);
        // The idle worker is held for the head: an elastic job may not grow onto it.
        Assert.Equal(0, c.Registry.FreeCount());

        c.Registry.Release("job-0002");
        c.Registry.Release("job-0004");
        c.Schedule();
        Assert.Equal([("job-0002", 1), ("job-0004", 1), ("job-0001", 3)], c.Started);
    }

    [Fact]
    public void A_job_restarting_from_its_checkpoint_starts_before_the_queue_with_its_minimum_of_workers()
    {
        var c = new Cluster(2);
        var queued = Job(1, 2);
        c.Queue.Enqueue(queued);
        var again = Job(2, 4);
        again.Update(p => p with { Restarts = 1, MinWorkers = 2 });
        c.Queue.EnqueueRestart(again);

        c.Schedule();

        Assert.Equal([("job-0002", 2)], c.Started);
        Assert.Contains("waiting for 2 idle worker(s)", queued.Progress.Message);
    }

    [Fact]
    public void A_restart_waiting_for_a_worker_that_is_joining_is_not_overtaken_by_a_queued_job()
    {
        // After a coordinator restart the workers register again one by one: the job that was running waits for its 2,
        // one idle and one joining (registered, no heartbeat yet). The queued job used to take the idle one and run
        // first, or — when the joining worker became idle between the restart's look and the queue's — both
        // (CoordinatorRestartTests saw "the queued job ran after the resumed one" once).
        var c = new Cluster(1);
        var joining = c.Registry.Register(new WorkerRegistration(InMemoryWorkerPool.AddressOf("node-1"), "node-1", WorkerCapabilities.Unknown with { Cores = 1 }));
        var resumed = Job(1, 2);
        c.Queue.EnqueueRestart(resumed);
        var queued = Job(2, 1);
        c.Queue.Enqueue(queued);

        c.Schedule();

        Assert.Empty(c.Started);
        Assert.Equal("queued behind job-0001, which resumes from its checkpoint once 2 workers are idle", queued.Progress.Message);
        Assert.Equal(0, c.Registry.FreeCount());   // the idle worker is held for it

        Assert.True(c.Registry.Heartbeat(joining.Id, joining.Token));
        c.Schedule();
        Assert.Equal([("job-0001", 2)], c.Started);
        c.Registry.Release("job-0001");
        c.Schedule();
        Assert.Equal([("job-0001", 2), ("job-0002", 1)], c.Started);
    }

    [Fact]
    public void While_a_restart_waits_for_workers_to_register_queued_jobs_may_start_on_the_idle_ones_and_then_none_overtakes_it()
    {
        // The restart needs 3 and only 2 workers can take jobs: it waits for one more to register. Queued jobs may use
        // the 2 idle meanwhile (as behind a head that waits for workers to register), in submission order.
        var c = new Cluster(2);
        c.Queue.EnqueueRestart(Job(1, 3));
        var last = Job(4, 1);
        foreach (var job in new[] { Job(2, 1), Job(3, 1), last }) c.Queue.Enqueue(job);

        c.Schedule();

        Assert.Equal([("job-0002", 1), ("job-0003", 1)], c.Started);
        // A third registers: enough can take jobs, the restart only waits for running jobs; the new idle worker is its.
        c.Add("node-2");
        c.Schedule();
        Assert.Equal(2, c.Started.Count);
        Assert.Equal("queued behind job-0001, which resumes from its checkpoint once 3 workers are idle", last.Progress.Message);
        c.Registry.Release("job-0002");
        c.Registry.Release("job-0003");
        c.Schedule();
        Assert.Equal([("job-0002", 1), ("job-0003", 1), ("job-0001", 3)], c.Started);
    }
}
