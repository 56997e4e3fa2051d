using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A data-parallel job on real worker processes (LocalCluster) with each data-plane transport set by
/// DTRAIN_Worker__Transport: it succeeds — which includes the replicas' parameter checksums agreeing every 25 steps
/// and at the end — and each worker's log names the link it chose for its ring neighbour.
/// </summary>
public class TransportClusterTests
{
    [Theory]
    [InlineData("shm", "shared memory", true)]
    [InlineData("shm", "shared memory", false)]
    [InlineData("tcp", "tcp", true)]
    [InlineData("grpc", "grpc", true)]
    [InlineData("auto", "shared memory", true)]
    public async Task A_two_worker_job_trains_to_equal_replicas_over(string transport, string logged, bool group)
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: 60);
        spec = spec with
        {
            Model = spec.Model with { HiddenSize = 48 },
            Training = spec.Training with { BatchSize = 12, SeqLen = 16, LmSampling = LmSamplingKinds.Random, EvalInterval = 0, CheckpointInterval = 0 },
        };
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        var logs = Path.Combine(tmp.Path, "cluster");
        using (var cluster = LocalCluster.Start(2, 0, 1, logs, TimeSpan.FromMinutes(2), new Dictionary<string, string> { ["DTRAIN_Worker__Transport"] = transport, ["DTRAIN_Worker__SharedMemoryGroup"] = group ? "true" : "false" }))
        {
            using var channel = Remote.Channel(cluster.Address);
            var client = new Jobs.JobsClient(channel);
            var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId;
            var deadline = DateTime.UtcNow.AddMinutes(4);
            JobInfo info;
            while (true)
            {
                info = client.Get(new GetJobRequest { JobId = id });
                if (info.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled) break;
                Assert.True(DateTime.UtcNow < deadline, $"job {id} still {info.State} at step {info.Step}: {info.Message}");
                await Task.Delay(100);
            }
            Assert.True(info.State == JobState.Succeeded, $"{transport}: {info.State}: {info.Message}");
            Assert.Equal(60, info.Step);
        }
        var workerLogs = string.Join("\n", Directory.GetFiles(logs, "worker-*.log").Select(File.ReadAllText));
        Assert.Matches($@"ring w\d+->w\d+: {logged} ", workerLogs);
        Assert.DoesNotMatch(@"ring w\d+->w\d+: (?!" + logged + " )", workerLogs);
        // Both workers share this host: over shared-memory links they sum in the shared-memory group unless it is turned off.
        if (logged == "shared memory" && group)
        {
            Assert.Matches(@"all-reduce of job \S+ generation 1: shared-memory group of 2 workers on this host", workerLogs);
            // Each replica's gradient buffer lives in the group's shared memory: its sums are zero-copy.
            Assert.Equal(2, System.Text.RegularExpressions.Regex.Count(workerLogs, @"gradient buffer of job \S+ generation 1: \d+ values registered with the shared-memory group \(sums are zero-copy\)"));
        }
        else
            Assert.Matches(@"all-reduce of job \S+ generation 1: ring \(no shared-memory group: " + (group ? "the link to the right-hand neighbour is not shared memory" : "turned off"), workerLogs);
    }
}
