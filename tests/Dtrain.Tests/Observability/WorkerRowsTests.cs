using Dtrain.Protos.Jobs;
using Dtrain.Server.Auth;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Security;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Observability;

/// <summary>`dtrain status` rows (JobInfo.worker_rows) on a live in-process cluster: every worker's phase and step, and what a submitter may see.</summary>
public class WorkerRowsTests
{
    [Fact]
    public async Task A_running_job_shows_each_workers_phase_and_a_submitter_sees_ids_without_names_or_addresses()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        var (alice, _, _) = AuthTestSupport.Token(cluster, "alice", Role.Submitter);
        var id = AuthTestSupport.SubmitLm(alice, tmp, "rows", 100_000, workers: 2);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        JobInfo mine;
        while ((mine = alice.Get(new GetJobRequest { JobId = id })).Step < 3 || mine.WorkerRows.Count < 2 || mine.WorkerRows.Any(r => r.Activity?.JobId != id || r.Activity.Step == 0 || r.Activity.Phase == Dtrain.Distributed.ActivityPhases.Loading))
        {
            Assert.True(DateTime.UtcNow < deadline, $"no rows with phases of the job (heartbeats carry them, every second): {mine}");
            await Task.Delay(100);
        }
        Assert.Equal(mine.WorkerIds.Order(), mine.WorkerRows.Select(r => r.WorkerId).Order());
        Assert.All(mine.WorkerRows, r =>
        {
            Assert.Equal("", r.Name);
            Assert.Equal("", r.Address);
            Assert.Equal(id, r.Activity.JobId);
            Assert.True(r.Activity.Step > 0, r.ToString());
            Assert.Contains(r.Activity.Phase, Dtrain.Distributed.ActivityPhases.All);
            Assert.NotEqual("", r.Activity.Transport);   // the ring's link to its neighbour (shared memory here: auto, one host)
        });
        var admin = cluster.Client.Get(new GetJobRequest { JobId = id });
        Assert.All(admin.WorkerRows, r => Assert.StartsWith("test-", r.Name));
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
        var ended = await cluster.WaitAsync(id, TimeSpan.FromSeconds(60));
        Assert.Empty(cluster.Client.Get(new GetJobRequest { JobId = id }).WorkerRows);   // rows are for running jobs
        Assert.Equal(JobState.Cancelled, ended.State);
    }
}
