using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Pending uploads (received, not yet used by a job) are in the coordinator's job store: after a restart — kill -9
/// included — they are still pending for the same client (its quota), usable by a submit, and expire on their first TTL.
/// </summary>
public class UploadRestartTests
{
    [Fact]
    public async Task Uploads_survive_a_killed_coordinator_for_the_same_client_and_a_job_can_use_them()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(100));
        tmp.Write("other.txt", "other data");
        var env = new Dictionary<string, string> { ["DTRAIN_Coordinator__MaxPendingUploads"] = "2" };
        using var cluster = LocalCluster.Start(1, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), env);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var data = JobCommands.Upload(client, Path.Combine(tmp.Path, "t.txt"));
        JobCommands.Upload(client, Path.Combine(tmp.Path, "other.txt"));

        cluster.KillCoordinator();
        cluster.RestartCoordinator(TimeSpan.FromMinutes(2));

        // Still this client's two pending uploads: a third is over its quota (before, a restart forgot whose they were).
        var refused = Assert.Throws<RpcException>(() => JobCommands.Upload(client, Path.Combine(tmp.Path, "other.txt")));
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("already has 2 pending uploads", refused.Status.Detail);

        var request = new SubmitRequest { SpecJson = JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 3)), Workers = 1 };
        request.UploadedFiles["t.txt"] = data;
        var id = client.Submit(request).JobId;
        var deadline = DateTime.UtcNow.AddMinutes(2);
        JobInfo info;
        while (!((info = client.Get(new GetJobRequest { JobId = id })).State is JobState.Succeeded or JobState.Failed or JobState.Cancelled))
        {
            Assert.True(DateTime.UtcNow < deadline, $"job {id} still {info.State}");
            await Task.Delay(100);
        }
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        // The used upload no longer counts: one more fits.
        JobCommands.Upload(client, Path.Combine(tmp.Path, "other.txt"));
    }

    [Fact]
    public async Task After_a_restart_an_upload_expires_on_its_first_ttl_not_one_counted_from_the_restart()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2030-01-01T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { UploadTtlMinutes = 10 }, services => services.AddSingleton<TimeProvider>(clock));
        var id = JobCommands.Upload(cluster.Client, Path.Combine(tmp.Path, "t.txt"));
        var stored = Path.Combine(cluster.DataDir, "uploads", id);
        clock.Advance(TimeSpan.FromMinutes(6));

        await cluster.RestartCoordinatorAsync(services => services.AddSingleton<TimeProvider>(clock));
        Assert.True(File.Exists(stored), "a pending upload was deleted by the restart");
        Assert.True(cluster.CoordinatorService<UploadStore>().IsPending(id));
        Assert.Equal(0, cluster.CoordinatorService<UploadStore>().Sweep());

        // 6 + 5 minutes after it completed: past its 10-minute TTL, though only 5 after the restart (the coordinator's sweep runs on this clock).
        clock.Advance(TimeSpan.FromMinutes(5));
        cluster.CoordinatorService<UploadStore>().Sweep();
        Assert.False(File.Exists(stored), "an upload unused for longer than its TTL is still there");
        Assert.False(cluster.CoordinatorService<UploadStore>().IsPending(id));

        // Its row went with it: a further restart does not bring it back.
        await cluster.RestartCoordinatorAsync(services => services.AddSingleton<TimeProvider>(clock));
        Assert.False(cluster.CoordinatorService<UploadStore>().IsPending(id));
    }
}
