using System.Diagnostics;
using Dtrain.E2E.Support;
using Dtrain.Protos.Jobs;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>
/// deploy/docker-compose.yml itself: up with 3 workers over mutual TLS (the CLI on the host needs the client certificate
/// copied out with `compose cp`, as the README says, and is refused without it), a job on all 3 (summing through the
/// shared memory the workers' /dev/shm volume gives them); scaled to 4 without
/// touching the running containers, a job on 4; scaled back to 3 while idle (the removed worker leaves cleanly: gone
/// from the list, never "lost"); `down -v` leaves no container, network or volume of the project.
/// </summary>
[Collection(DockerCollection.Name)]
public sealed class ComposeTests(ImageFixture image, ITestOutputHelper output)
{
    [DockerFact]
    public async Task Compose_cluster_scales_up_and_down_and_down_v_removes_everything()
    {
        image.EnsureBuilt(output);
        using var tmp = new TempDir();
        var cli = new HostCli(output, tmp.Path);
        var spec = E2EJobs.ShortLm(tmp, steps: 12);
        var compose = new ComposeProject(output);
        await using var _ = compose;
        try
        {
            await compose.CheckAsync(TimeSpan.FromMinutes(4), "up", "-d", "--scale", "worker=3");
            var tls = await compose.ClientTlsAsync();
            // The coordinator listens beyond loopback in its container: auth is on; the README's first step makes a token.
            cli.Token = await compose.CreateAdminTokenAsync("e2e");
            using var client = new CoordinatorClient(compose.Address, tls, cli.Token);
            var idle = await client.WaitForIdleWorkersAsync(3, TimeSpan.FromSeconds(90));
            Assert.All(idle, w => Assert.StartsWith("https://", w.Address, StringComparison.Ordinal));

            // TLS is on: without the client certificate the CLI is refused, and told what to do.
            var untrusted = await cli.RunAsync("workers", "--coordinator", compose.Address);
            Assert.True(untrusted.ExitCode == 2 && untrusted.Stderr.Contains("not trusted", StringComparison.Ordinal), untrusted.ToString());
            var plaintext = await cli.RunAsync("workers", "--coordinator", $"http://127.0.0.1:{compose.Port}");
            Assert.True(plaintext.ExitCode == 2 && plaintext.Stderr.Contains($"use {compose.Address}", StringComparison.Ordinal), plaintext.ToString());
            var caOnly = await cli.RunAsync("workers", "--coordinator", compose.Address, "--ca", Path.Combine(tls, "ca.crt"));
            Assert.True(caOnly.ExitCode == 1 && caOnly.Stderr.Contains("needs a client certificate", StringComparison.Ordinal), caOnly.ToString());
            cli.TlsDir = tls;
            var coordinatorId = Assert.Single(await compose.ContainerIdsAsync("coordinator"));
            var first = await compose.ContainerIdsAsync("worker");
            Assert.Equal(3, first.Count);
            var started = await StartTimesAsync(first);

            var (job3, watch3) = await cli.SubmitAsync(compose.Address, spec, workers: 3, watch: true);
            Assert.True(watch3.ExitCode == 0, watch3.ToString());
            Assert.Equal(3, (await cli.StatusWorkersAsync(compose.Address, job3)).Count);
            // The workers share the `shm` volume at /dev/shm: the data plane finds them on one host and they sum through
            // shared memory (each ring link says so when the ring forms: `ring w1->w2: shared memory (job ...)`), not tcp+tls.
            foreach (var id in first)
            {
                var logs = await DockerEngine.CheckAsync("logs", id);
                Assert.True((logs.Stdout + logs.Stderr).Contains(": shared memory (job ", StringComparison.Ordinal),
                    $"worker {id[..12]} did not link to its neighbour through shared memory:\n{logs.Stdout}{logs.Stderr}");
            }

            // Scale up: one new container; the coordinator and the 3 workers are neither recreated nor restarted.
            await compose.CheckAsync(TimeSpan.FromMinutes(3), "up", "-d", "--scale", "worker=4");
            var second = await compose.ContainerIdsAsync("worker");
            Assert.Equal(4, second.Count);
            Assert.Subset(second.ToHashSet(), first.ToHashSet());
            Assert.Equal(started, await StartTimesAsync(first));
            Assert.Equal(coordinatorId, Assert.Single(await compose.ContainerIdsAsync("coordinator")));
            await client.WaitForIdleWorkersAsync(4, TimeSpan.FromSeconds(90));

            var (job4, watch4) = await cli.SubmitAsync(compose.Address, spec, workers: 4, watch: true);
            Assert.True(watch4.ExitCode == 0, watch4.ToString());
            Assert.Equal(4, (await cli.StatusWorkersAsync(compose.Address, job4)).Count);

            // Scale down while idle: compose stops one worker (SIGTERM); it leaves the coordinator at once.
            var ips = new Dictionary<string, string>();
            foreach (var id in second) ips[id] = (await DockerEngine.CheckAsync("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id)).Stdout.Trim();
            // Their logs, followed: compose removes the stopped container at once.
            var followers = second.ToDictionary(id => id, id => new LogFollower(id));
            using var stopFollowing = new Disposables(followers.Values);
            var clock = Stopwatch.StartNew();
            await compose.CheckAsync(TimeSpan.FromMinutes(3), "up", "-d", "--scale", "worker=3");
            var scaledDown = clock.Elapsed;
            var third = await compose.ContainerIdsAsync("worker");
            Assert.Equal(3, third.Count);
            var removed = Assert.Single(second.Except(third));
            var removedAddress = $"https://{ips[removed]}:7000";
            output.WriteLine($"scale-down removed container {removed[..12]} ({removedAddress}) in {scaledDown.TotalSeconds:F1} s; its last log lines:");
            output.WriteLine(string.Join('\n', (await followers[removed].TextAsync(TimeSpan.FromSeconds(5))).TrimEnd().Split('\n').TakeLast(6)));
            IReadOnlyList<WorkerInfo> workers;
            while (true)
            {
                workers = client.Workers();
                Assert.DoesNotContain(workers, w => w.State == WorkerState.Lost);
                if (workers.Count == 3) break;
                Assert.True(clock.Elapsed < scaledDown + TimeSpan.FromSeconds(5),
                    $"5 s after the scale-down the coordinator still lists {workers.Count} workers: {CoordinatorClient.Describe(workers)}");
                await Task.Delay(200);
            }
            output.WriteLine($"the coordinator lists 3 workers {clock.Elapsed.TotalSeconds:F1} s after the scale-down began: {CoordinatorClient.Describe(workers)}");
            Assert.DoesNotContain(workers, w => w.Address == removedAddress);
            Assert.All(workers, w => Assert.Equal(WorkerState.Idle, w.State));
            await cli.CheckAsync("workers", "--coordinator", compose.Address);

            var down = await compose.DownAsync();
            Assert.True(down.ExitCode == 0, down.ToString());
            var (containers, networks, volumes) = await compose.LabelledResourcesAsync();
            output.WriteLine($"after down -v: {containers.Length} container(s), {networks.Length} network(s), {volumes.Length} volume(s) labelled com.docker.compose.project={compose.Name}");
            Assert.Empty(containers);
            Assert.Empty(networks);
            Assert.Empty(volumes);
        }
        catch
        {
            if (!compose.IsDown) await compose.PrintLogsAsync();
            throw;
        }
    }

    static async Task<List<string>> StartTimesAsync(IEnumerable<string> ids)
    {
        var times = new List<string>();
        foreach (var id in ids) times.Add($"{id[..12]} {(await DockerEngine.CheckAsync("inspect", "-f", "{{.State.StartedAt}}", id)).Stdout.Trim()}");
        return times;
    }

    sealed class Disposables(IEnumerable<IDisposable> items) : IDisposable
    {
        public void Dispose()
        {
            foreach (var d in items) d.Dispose();
        }
    }
}
