using System.Diagnostics;
using System.Globalization;
using Dtrain.E2E.Support;
using Dtrain.Protos.Jobs;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>
/// The coordinator container restarted on the same volume. Kept: the files on the volume (uploads, checkpoints), the
/// job records (its job store, jobs.db: the finished job is still listed, its status shown and its model downloadable),
/// and job numbering continues after the highest job. The workers find the new coordinator by themselves and register again.
/// </summary>
[Collection(DockerCollection.Name)]
public sealed class CoordinatorRestartTests(ImageFixture image, ITestOutputHelper output)
{
    [DockerFact]
    public async Task Restarted_coordinator_keeps_its_files_and_its_jobs_and_continues_numbering()
    {
        await using var scene = await ClusterScene.StartAsync(image, output, "restart", 2);
        var (tmp, cli, cluster) = (scene.Tmp, scene.Cli, scene.Cluster);
        var spec = E2EJobs.ShortLm(tmp);
        await cluster.RunAsync(async () =>
        {
            var (first, watch) = await cli.SubmitAsync(cluster.Address, spec, workers: 2, watch: true);
            Assert.True(watch.ExitCode == 0, watch.ToString());
            var checkpoints = $"{ContainerCluster.DataDir}/jobs/{first}/checkpoints";
            var data = $"{ContainerCluster.DataDir}/jobs/{first}/data";
            var before = await ListAsync(cluster, checkpoints);
            Assert.NotEmpty(before);
            var dataBefore = await ListAsync(cluster, data);
            Assert.NotEmpty(dataBefore);
            Assert.Contains(first, (await cli.CheckAsync("list", "--coordinator", cluster.Address)).Stdout);

            // The workers come back in the order that trips up a coordinator which hands out the same ids afresh: the
            // worker that registered first (and got the first id) is frozen (docker pause) over the restart, so the
            // other one registers first this time — and may be given that id; the frozen one then comes back with
            // its old id, and must still end up registered under its own address.
            using var oldClient = cluster.NewClient();
            var firstRegistered = oldClient.Workers().MinBy(w => w.RegisteredUnixMs)!;
            var frozen = cluster.WorkerAt(firstRegistered.Address);
            var other = cluster.Workers.Single(w => w != frozen);
            output.WriteLine($"pausing {frozen.Name} ({firstRegistered.WorkerId}, {firstRegistered.Address}) over the restart");
            await DockerEngine.CheckAsync("pause", frozen.Id);
            var clock = Stopwatch.StartNew();
            try
            {
                await cluster.RestartCoordinatorAsync();
                output.WriteLine($"docker restart took {clock.Elapsed.TotalSeconds:F1} s; the coordinator now at {cluster.Address}");
                // (a) it answers health again.
                await cluster.WaitForJobsServiceAsync(TimeSpan.FromSeconds(60));
                using var early = cluster.NewClient();
                var registered = await early.WaitForIdleWorkersAsync(1, TimeSpan.FromSeconds(15));
                output.WriteLine($"before the unpause: {CoordinatorClient.Describe(registered)}");
                Assert.Equal($"https://{other.IpAddress}:7000", registered[0].Address);
            }
            finally
            {
                await DockerEngine.RunAsync("unpause", frozen.Id);
            }
            var unpaused = clock.Elapsed;
            // (b) both workers register again by themselves, each under its own address.
            using var client = cluster.NewClient();
            var workers = await client.WaitForIdleWorkersAsync(2, TimeSpan.FromSeconds(15),
                $"{frozen.Name} ({firstRegistered.Address}) held {firstRegistered.WorkerId} before the restart; the restarted coordinator has since given ids to other workers. " +
                "If its log shows no 'registering again', its heartbeats under the old id were accepted as another worker's");
            output.WriteLine($"2 idle workers {(clock.Elapsed - unpaused).TotalSeconds:F1} s after the unpause: {CoordinatorClient.Describe(workers)}");
            Assert.Equal(cluster.Workers.Select(w => $"https://{w.IpAddress}:7000").Order(), workers.Select(w => w.Address).Order());

            // (c) the job list is kept (the job store on the volume) ...
            var list = await cli.CheckAsync("list", "--coordinator", cluster.Address);
            Assert.Contains(first, list.Stdout);
            Assert.Equal(JobState.Succeeded, Assert.Single(client.List()).State);
            var download = await cli.CheckAsync("download", first, "--coordinator", cluster.Address, "-o", Path.Combine(tmp.Path, "first.dtck"));
            Assert.True(File.Exists(Path.Combine(tmp.Path, "first.dtck")), download.ToString());
            // (d) ... and so are the job's files.
            var after = await ListAsync(cluster, checkpoints);
            Assert.Equal(before, after);
            Assert.Equal(dataBefore, await ListAsync(cluster, data));

            // (e) a new job gets the next number (not the old job's, whose directory still exists) and succeeds.
            var (second, watch2) = await cli.SubmitAsync(cluster.Address, spec, workers: 2, watch: true);
            Assert.True(watch2.ExitCode == 0, watch2.ToString());
            Assert.NotEqual(first, second);
            Assert.Equal(Number(first) + 1, Number(second));
            Assert.Equal(before, await ListAsync(cluster, checkpoints));
            Assert.NotEmpty(await ListAsync(cluster, $"{ContainerCluster.DataDir}/jobs/{second}/checkpoints"));

            output.WriteLine("after a coordinator restart on the same volume:");
            output.WriteLine($"  kept:      {checkpoints}/ ({string.Join(", ", after)}), {data}/ ({string.Join(", ", dataBefore)}); job numbering ({second} follows {first})");
            output.WriteLine($"  kept too:  the job records (`dtrain list` still shows {first}, succeeded, and its model downloads); forgotten: the worker registrations (the workers registered again)");
            var status = await cli.RunAsync("status", first, "--coordinator", cluster.Address);
            Assert.True(status.ExitCode == 0 && status.Stdout.Contains("succeeded", StringComparison.Ordinal), status.ToString());
        });
    }

    static int Number(string job) => int.Parse(job["job-".Length..], CultureInfo.InvariantCulture);

    static async Task<List<string>> ListAsync(ContainerCluster cluster, string dir)
    {
        var r = await cluster.Coordinator.ExecAsync(["ls", "-1", dir]);
        Assert.True(r.ExitCode == 0, $"ls {dir} in the coordinator: exit {r.ExitCode} {r.Stderr}");
        return r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
    }
}
