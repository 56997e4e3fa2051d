using System.Diagnostics;
using System.Globalization;
using Dtrain.E2E.Support;
using Dtrain.Protos.Jobs;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>
/// Workers that go away mid-job, as containers do, in jobs that need all their workers (`--min-workers` = their
/// workers; elastic jobs go on without them — tests/Dtrain.Tests/Cluster/ElasticTests): killed (SIGKILL — the job
/// fails naming the worker and the coordinator carries on with the survivors) or stopped (SIGTERM — the worker drains:
/// it finishes its step, tells the coordinator it leaves and exits 0 well within its grace period; it is not reported lost).
/// </summary>
[Collection(DockerCollection.Name)]
public sealed class WorkerFailureTests(ImageFixture image, ITestOutputHelper output)
{
    /// <summary>Heartbeats every second (the default); a worker is lost after 5 s without one.</summary>
    static readonly Dictionary<string, string> FastLoss = new() { ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = "5", ["DTRAIN_Coordinator__WaitForWorkersSeconds"] = "1" };

    [DockerFact]
    public async Task Killed_worker_container_fails_its_job_naming_it_and_the_survivors_take_the_next_job()
    {
        await using var scene = await ClusterScene.StartAsync(image, output, "kill", 3, FastLoss);
        var (cli, cluster) = (scene.Cli, scene.Cluster);
        var longJob = E2EJobs.LongLm(scene.Tmp);
        var shortJob = E2EJobs.ShortLm(scene.Tmp);
        await cluster.RunAsync(async () =>
        {
            using var client = cluster.NewClient();
            var (id, _) = await cli.SubmitAsync(cluster.Address, longJob, workers: 3, watch: false, extra: ["--min-workers", "3"]);
            var running = await client.WaitForStepAsync(id, 5, TimeSpan.FromSeconds(90));
            Assert.Equal(3, running.WorkerIds.Count);
            var victim = client.Workers().Single(w => w.WorkerId == running.WorkerIds[1]);
            var container = cluster.WorkerAt(victim.Address);
            output.WriteLine($"killing {container.Name} = worker {victim.WorkerId} ({victim.Address}), rank 1 of {id} at step {running.Step}");

            var clock = Stopwatch.StartNew();
            await DockerEngine.CheckAsync("kill", container.Id);
            var failed = await client.WaitForEndAsync(id, TimeSpan.FromSeconds(30));
            var took = clock.Elapsed;
            output.WriteLine($"{id} {failed.State} {took.TotalSeconds:F1} s after the kill: {failed.Message}");
            Assert.Equal(JobState.Failed, failed.State);
            Assert.True(took < TimeSpan.FromSeconds(15), $"the job failed {took.TotalSeconds:F1} s after the kill (limit 15 s)");
            Assert.True(failed.Message.Contains(victim.WorkerId, StringComparison.Ordinal) || failed.Message.Contains(victim.Address, StringComparison.Ordinal),
                $"the failure message names neither {victim.WorkerId} nor {victim.Address}: {failed.Message}");

            // The coordinator keeps serving: health, and the next job on the 2 survivors.
            await cli.CheckAsync("health", cluster.Address, "--service", "dtrain.jobs.v1.Jobs");
            var (next, watch) = await cli.SubmitAsync(cluster.Address, shortJob, workers: 2, watch: true);
            Assert.True(watch.ExitCode == 0, watch.ToString());
            var ran = await cli.StatusWorkersAsync(cluster.Address, next);
            Assert.Equal(2, ran.Count);
            Assert.DoesNotContain(victim.WorkerId, ran);
            Assert.All(ran, w => Assert.Contains(w, running.WorkerIds));
            var after = await cli.CheckAsync("workers", "--coordinator", cluster.Address);
            Assert.Contains("lost", after.Stdout);
        });
    }

    [DockerFact]
    public async Task Stopped_worker_container_drains_leaves_and_exits_0_and_its_job_fails_naming_it()
    {
        await using var scene = await ClusterScene.StartAsync(image, output, "drain", 2, FastLoss);
        var (cli, cluster) = (scene.Cli, scene.Cluster);
        var longJob = E2EJobs.LongLm(scene.Tmp);
        await cluster.RunAsync(async () =>
        {
            using var client = cluster.NewClient();
            var (id, _) = await cli.SubmitAsync(cluster.Address, longJob, workers: 2, watch: false, extra: ["--min-workers", "2"]);
            var running = await client.WaitForStepAsync(id, 5, TimeSpan.FromSeconds(90));
            var victim = client.Workers().Single(w => w.WorkerId == running.WorkerIds[1]);
            var survivor = running.WorkerIds[0];
            var container = cluster.WorkerAt(victim.Address);
            output.WriteLine($"stopping {container.Name} = worker {victim.WorkerId} ({victim.Address}), holding rank 1 of {id} at step {running.Step}");

            // docker stop: SIGTERM, then SIGKILL after the grace period (60 s, as in deploy/docker-compose.yml).
            const int Grace = 60;
            var stop = await DockerEngine.CheckAsync("stop", "-t", Grace.ToString(CultureInfo.InvariantCulture), container.Id);
            var exitCode = (await DockerEngine.CheckAsync("inspect", "-f", "{{.State.ExitCode}}", container.Id)).Stdout.Trim();
            output.WriteLine($"{container.Name} exited with {exitCode} {stop.Elapsed.TotalSeconds:F1} s after SIGTERM");
            Assert.True(stop.Elapsed < TimeSpan.FromSeconds(Grace / 3), $"the worker took {stop.Elapsed.TotalSeconds:F1} s to exit after SIGTERM (grace {Grace} s)");
            Assert.Equal("0", exitCode);

            var failed = await client.WaitForEndAsync(id, TimeSpan.FromSeconds(30));
            output.WriteLine($"{id} {failed.State}: {failed.Message}");
            Assert.Equal(JobState.Failed, failed.State);
            Assert.Contains(victim.WorkerId, failed.Message);
            Assert.Contains("left after step", failed.Message);

            // It left: no longer listed (and never as lost); the survivor is idle again.
            var clock = Stopwatch.StartNew();
            IReadOnlyList<WorkerInfo> workers;
            while (true)
            {
                workers = client.Workers();
                Assert.DoesNotContain(workers, w => w.State == WorkerState.Lost);
                if (workers.All(w => w.WorkerId != victim.WorkerId) && workers.Count == 1 && workers[0].State == WorkerState.Idle) break;
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"10 s after the job ended the coordinator lists {CoordinatorClient.Describe(workers)}");
                await Task.Delay(200);
            }
            Assert.Equal(survivor, workers[0].WorkerId);
            // Past the 5 s worker timeout: still not lost, still gone.
            await Task.Delay(TimeSpan.FromSeconds(6));
            workers = client.Workers();
            Assert.DoesNotContain(workers, w => w.WorkerId == victim.WorkerId || w.State == WorkerState.Lost);
            var listed = await cli.CheckAsync("workers", "--coordinator", cluster.Address);
            Assert.DoesNotContain("lost", listed.Stdout);
            var (logs, _) = await container.GetLogsAsync();
            output.WriteLine($"the stopped worker's last log lines:\n{string.Join('\n', logs.TrimEnd().Split('\n').TakeLast(8))}");
        });
    }
}
