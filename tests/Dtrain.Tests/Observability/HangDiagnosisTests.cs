using System.Diagnostics;
using System.Globalization;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Observability;

/// <summary>
/// Real processes on loopback: a coordinator and 3 workers run a job; one worker is stopped with SIGSTOP mid-step.
/// `dtrain status` must name it with its phase, and the others as waiting on it, within the stall warning time —
/// long before the coordinator declares it lost.
/// </summary>
public class HangDiagnosisTests
{
    const double StallWarning = 3;
    const double WorkerTimeout = 10;

    static readonly Dictionary<string, string> Options = new()
    {
        ["DTRAIN_Coordinator__HeartbeatIntervalMs"] = "300",
        ["DTRAIN_Coordinator__StallWarningSeconds"] = StallWarning.ToString(CultureInfo.InvariantCulture),
        ["DTRAIN_Coordinator__WorkerTimeoutSeconds"] = WorkerTimeout.ToString(CultureInfo.InvariantCulture),
        ["DTRAIN_Coordinator__StepTimeoutSeconds"] = "120",
    };

    static void Signal(int pid, string signal) => Process.Start("kill", [signal, pid.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();

    [Fact]
    public async Task A_stopped_worker_is_named_with_its_phase_and_the_others_wait_on_it_before_it_is_lost()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(200));
        var spec = TestJobs.CharLm("t.txt", steps: 100_000);
        spec = spec with
        {
            Model = spec.Model with { HiddenSize = 64 },
            Training = spec.Training with { EvalInterval = 0, CheckpointInterval = 0, BatchSize = 12, Threads = 1 },
        };
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));
        using var cluster = LocalCluster.Start(3, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2), Options);
        using var channel = Remote.Channel(cluster.Address);
        var client = new Jobs.JobsClient(channel);
        var request = JobCommands.BuildSubmit(client, new FileInfo(path), 3);
        request.MinWorkers = 3;
        var id = client.Submit(request).JobId;
        var deadline = DateTime.UtcNow.AddSeconds(90);
        JobInfo info;
        while ((info = client.Get(new GetJobRequest { JobId = id })).Step < 5 || info.WorkerRows.Any(r => r.Activity is null))
        {
            Assert.True(DateTime.UtcNow < deadline, $"job {id} did not reach step 5 with every worker reporting its phase");
            await Task.Delay(100);
        }
        // While it runs, every worker reports a phase and a step; no stall.
        Assert.Equal(3, info.WorkerRows.Count);
        Assert.All(info.WorkerRows, r => Assert.True(r.Activity.Step > 0 && r.Activity.Phase != "", r.ToString()));
        Assert.Equal("", info.Stall);

        var victim = client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.Name == "worker-2").WorkerId;
        var pid = cluster.WorkerProcessId(1);
        using var watch = client.Watch(new WatchJobRequest { JobId = id });
        var clock = Stopwatch.StartNew();
        Signal(pid, "-STOP");
        try
        {
            while ((info = client.Get(new GetJobRequest { JobId = id })).Stall == "")
            {
                Assert.True(clock.Elapsed.TotalSeconds < WorkerTimeout, $"no stall warning {clock.Elapsed.TotalSeconds:F1} s after {victim} stopped (state {info.State}: {info.Message})");
                await Task.Delay(100);
            }
            var named = clock.Elapsed.TotalSeconds;
            Console.WriteLine($"stall named {named:F1} s after SIGSTOP (StallWarningSeconds {StallWarning}, WorkerTimeoutSeconds {WorkerTimeout}): {info.Stall}");
            Assert.Equal(JobState.Running, info.State);
            var row = info.WorkerRows.Single(r => r.WorkerId == victim);
            Assert.True(row.Stalled, row.ToString());
            Assert.StartsWith($"{victim} (worker-2) in {row.Activity.Phase}", info.Stall);
            Assert.All(info.WorkerRows.Where(r => r.WorkerId != victim), r => Assert.False(r.Stalled, r.ToString()));

            // The CLI shows the same: the victim with its phase, and the others waiting on it (directly, or on one who waits on it).
            var status = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "status", id, "--coordinator", cluster.Address);
            Assert.True(status.ExitCode == 0, status.ToString());
            Console.WriteLine(status.Stdout);
            Assert.Contains($"STALL: {victim} (worker-2) in {row.Activity.Phase}", status.Stdout);
            Assert.True(status.Stdout.Contains($"waiting on {victim}", StringComparison.Ordinal) || status.Stdout.Contains($"waits on {victim}", StringComparison.Ordinal), status.Stdout);
            Assert.Contains("last heartbeat", status.Stdout);
            foreach (var r in info.WorkerRows) Assert.Contains(r.WorkerId, status.Stdout);
            var ages = info.WorkerRows.ToDictionary(r => r.WorkerId, r => r.HeartbeatAgeMs);
            Assert.True(ages[victim] >= StallWarning * 1000 || info.WorkerRows.Single(r => r.WorkerId == victim).Activity.InPhaseMs >= StallWarning * 1000, info.ToString());
            Assert.True(clock.Elapsed.TotalSeconds < WorkerTimeout, $"the status came {clock.Elapsed.TotalSeconds:F1} s after the stop: the worker may be lost by now");

            // The watch stream carries the warning as an event.
            using var cancel = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            string? warning = null;
            while (warning is null && await watch.ResponseStream.MoveNext(cancel.Token))
                if (watch.ResponseStream.Current.Log is { } log && log.StartsWith("stall warning:", StringComparison.Ordinal)) warning = log;
            Assert.NotNull(warning);
            Assert.Contains(victim, warning);
        }
        finally
        {
            Signal(pid, "-CONT");
        }
        // Resumed: the stall clears and the job goes on.
        var resumedAt = client.Get(new GetJobRequest { JobId = id }).Step;
        deadline = DateTime.UtcNow.AddSeconds(60);
        while ((info = client.Get(new GetJobRequest { JobId = id })).Step < resumedAt + 3 || info.Stall != "")
        {
            Assert.True(DateTime.UtcNow < deadline, $"job did not go on after SIGCONT: {info}");
            await Task.Delay(100);
        }
        Assert.Contains("stall warning", File.ReadAllText(Path.Combine(cluster.LogDir, "coordinator.log")));
        client.Cancel(new CancelJobRequest { JobId = id });
    }
}
