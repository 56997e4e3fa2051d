using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cluster;

/// <summary>Pipelines over real worker processes on loopback, driven by the CLI as a user drives it.</summary>
public class PipelineProcessTests
{
    static JobSpec Spec(TempDir tmp, int steps) => TestJobs.CharLm("t.txt", steps: steps) with
    {
        Name = "pipe",
        Model = new ModelSpec { Cell = CellKinds.Gru, Layers = 4, EmbeddingDim = 8, HiddenSize = 24 },
        Training = new TrainingSpec { BatchSize = 8, SeqLen = 16, MaxSteps = steps, EvalInterval = 0, CheckpointInterval = 0, Seed = 4, Threads = 1 },
    };

    static double FinalValidationLoss(CliRunner.Result r) =>
        double.Parse(Regex.Matches(r.Stdout, @"^validation: loss (?<v>[0-9.]+)", RegexOptions.Multiline)[^1].Groups["v"].Value, CultureInfo.InvariantCulture);

    [Fact]
    public void Four_stages_on_four_worker_processes_reach_the_validation_loss_of_one_process()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(150));
        var spec = Spec(tmp, 30);
        tmp.Write("single.json", JobSpecSerializer.Serialize(spec with { Name = "single" }));
        tmp.Write("pipe.json", JobSpecSerializer.Serialize(spec with
        {
            Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 4, Microbatches = 4, Schedule = "1f1b" } },
        }));
        var single = CliRunner.Run(tmp.Path, "train", "single.json", "--plain");
        Assert.True(single.ExitCode == 0, single.ToString());
        var piped = CliRunner.Run(tmp.Path, "cluster", "run", "pipe.json", "--workers", "4", "--threads", "1", "--plain");
        Assert.True(piped.ExitCode == 0, piped.ToString());
        Assert.Contains("stages ", piped.Stdout);   // watch shows per-stage compute and the bubble
        Assert.Matches(@"dashboard: http://127\.0\.0\.1:\d+/jobs/job-0001", piped.Stdout);
        var (a, b) = (FinalValidationLoss(single), FinalValidationLoss(piped));
        Assert.True(Math.Abs(a - b) <= 0.01, $"validation loss {b} with 4 stages vs {a} in one process");
        var eval = CliRunner.Run(tmp.Path, "eval", "runs/pipe/model.dtck");
        Assert.True(eval.ExitCode == 0, eval.ToString());
    }

    [Fact]
    public async Task A_stage_worker_that_dies_fails_the_job_naming_it()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(150));
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(Spec(tmp, 100_000) with
        {
            Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } },
        }));
        using var cluster = LocalCluster.Start(2, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2),
            new Dictionary<string, string> { ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = "3", ["DTRAIN_Coordinator__HeartbeatIntervalMs"] = "300" });
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var id = client.Submit(JobCommands.BuildSubmit(client, new FileInfo(path), 2)).JobId;
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (client.Get(new GetJobRequest { JobId = id }).Step < 3)
        {
            Assert.True(DateTime.UtcNow < deadline, "the pipeline job did not reach step 3");
            await Task.Delay(100);
        }
        var victim = client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == "worker-2");
        var clock = Stopwatch.StartNew();
        cluster.KillWorker(1);
        JobInfo info;
        while (true)
        {
            info = client.Get(new GetJobRequest { JobId = id });
            if (info.State is JobState.Failed or JobState.Succeeded or JobState.Cancelled) break;
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"job still {info.State} {clock.Elapsed.TotalSeconds:F0} s after a stage worker died");
            await Task.Delay(100);
        }
        Assert.Equal(JobState.Failed, info.State);
        // Found dead (connection refused, or no heartbeat), not merely timed out waiting for its step.
        Assert.DoesNotContain("did not finish", info.Message);
        Assert.True(info.Message.Contains(victim.WorkerId, StringComparison.Ordinal), info.Message);
    }
}
