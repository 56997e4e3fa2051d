using System.Text.Json;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Dashboard;

/// <summary>
/// Every job's step and evaluation events are kept with the job in the coordinator's store (DATA_DIR/jobs.db, table
/// events), survive a coordinator restart, and `dtrain metrics JOB` exports them as CSV or JSON lines.
/// </summary>
public class JobHistoryTests
{
    static JobRecord NewJob(TempDir tmp, string id)
    {
        var dir = Path.Combine(tmp.Path, "jobs", id);
        var spec = TestJobs.CharLm("t.txt") with { Output = dir };
        return new JobRecord(id, spec, dir, 2, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000), "alice");
    }

    static JobEvent StepAt(long step, double loss) => new()
    {
        Step = new StepEvent { Step = step, TotalSteps = 100, Epoch = 0, Loss = loss, Lr = 0.01, SamplesPerSecond = 10 * step, StepMs = 50, ComputeMs = 30, AllreduceMs = 15, GradNorm = 0.5, Workers = 2 },
    };

    static long StoredRows(string db)
    {
        using var c = new SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT COUNT(*) FROM events";
        return (long)cmd.ExecuteScalar()!;
    }

    [Fact]
    public void Step_and_eval_events_are_stored_with_the_job_read_back_after_a_reopen_and_continue_in_order()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        StoredJob stored;
        using (var store = new JobStore(db, NullLogger.Instance))
        {
            var job = NewJob(tmp, "job-0003");
            job.Persist(store);
            store.SaveNow(job);
            for (var s = 1; s <= 40; s++) job.Publish(ProtoMapper.FromProto(StepAt(s, 3.0 - s * 0.01)));
            job.PublishEval(40, new Dtrain.Training.EvalMetrics(2.5, 64));
            // Log lines and state changes are not metrics: not kept in the events table.
            job.Log("step 40: checkpoint x");
            job.Transition(JobTrigger.Start, "starting");
            job.Transition(JobTrigger.Run, "running");
            job.Transition(JobTrigger.Succeed, "done");
            Assert.Equal(41, job.History().Count);
            Assert.Equal(41, StoredRows(db));
            stored = Assert.Single(store.LoadAll());
        }
        using var reopened = new JobStore(db, NullLogger.Instance);
        var restored = JobRecord.Restore(stored, TestJobs.CharLm("t.txt"), Path.Combine(tmp.Path, "jobs", "job-0003"), Dtrain.Data.DataReadLimits.Local);
        restored.Persist(reopened);
        var history = restored.History().Select(ProtoMapper.EventOf).ToList();
        Assert.Equal(41, history.Count);
        Assert.Equal(Enumerable.Range(1, 40).Select(s => (long)s), history.Take(40).Select(e => e.Step.Step));
        Assert.Equal(40, history[40].Eval.Step);
        // Perplexity is added for language models before the event is stored.
        Assert.Equal(Math.Exp(2.5), history[40].Eval.Metrics.Perplexity, 9);
        // A step run again (a restart from a checkpoint) is kept after the earlier events, not in their place.
        restored.Publish(ProtoMapper.FromProto(StepAt(40, 1.0)));
        var again = restored.History().Select(ProtoMapper.EventOf).ToList();
        Assert.Equal(42, again.Count);
        Assert.Equal(1.0, again[41].Step.Loss);
    }

    [Fact]
    public void The_metrics_table_puts_validation_on_its_step_and_splits_the_step_time()
    {
        var events = new List<JobEvent> { StepAt(1, 2.0), StepAt(2, 1.5), new() { Eval = new EvalEvent { Step = 2, Metrics = new Metrics { Loss = 1.4, Count = 10, Accuracy = 0.75 } } } };
        events.Add(new JobEvent { Step = new StepEvent { Step = 3, Loss = double.NaN, StepMs = 20, ComputeMs = 5, AllreduceMs = 5, Skipped = true, Nonfinite = "loss", StageComputeMs = { 4, 5 }, Bubble = 0.25 } });
        var rows = MetricsTable.Rows(events);
        Assert.Equal(3, rows.Count);
        Assert.Equal(1.4, rows[1].Validation!.Loss);
        Assert.Null(rows[0].Validation);
        Assert.Equal(5, rows[0].WaitingMs);
        var csv = MetricsTable.Csv(rows).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(string.Join(',', MetricsTable.Columns), csv[0]);
        var header = csv[0].Split(',');
        var second = csv[2].Split(',');
        Assert.Equal("1.4", second[Array.IndexOf(header, "val_loss")]);
        Assert.Equal("0.75", second[Array.IndexOf(header, "val_accuracy")]);
        var third = csv[3].Split(',');
        Assert.Equal("NaN", third[Array.IndexOf(header, "loss")]);
        Assert.Equal("true", third[Array.IndexOf(header, "skipped")]);
        Assert.Equal("4;5", third[Array.IndexOf(header, "stage_compute_ms")]);
        using var jsonl = new MemoryStream();
        MetricsTable.WriteJsonLines(rows, jsonl);
        var lines = System.Text.Encoding.UTF8.GetString(jsonl.ToArray()).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // JSON has no NaN: the skipped step's loss is null.
        Assert.Equal(JsonValueKind.Null, JsonDocument.Parse(lines[2]).RootElement.GetProperty("loss").ValueKind);
        Assert.Equal(0.75, JsonDocument.Parse(lines[1]).RootElement.GetProperty("val_accuracy").GetDouble());
    }

    [Fact]
    public async Task A_pipeline_jobs_history_has_each_stages_compute_time_the_bubble_and_the_gradient_norm_on_every_step()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: 6) with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2 } } };
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(spec));
        await using var cluster = await Cluster.InProcessCluster.StartAsync(2);
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        var rows = MetricsTable.Rows(cluster.Client.History(new GetJobRequest { JobId = id }).Events);
        Assert.Equal(6, rows.Count);
        Assert.All(rows, r =>
        {
            Assert.Equal(2, r.StageComputeMs.Count);
            Assert.InRange(r.Bubble!.Value, 0, 1);
            Assert.True(r.GradNorm > 0, $"step {r.Step}: grad norm {r.GradNorm}");
        });
    }

    /// <summary>Real processes: a job runs, the coordinator is killed and started again, and `dtrain metrics` still exports every step.</summary>
    [Fact]
    public void Dtrain_metrics_exports_every_step_and_evaluation_of_a_finished_job_after_a_coordinator_restart()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(80));
        var spec = TestJobs.CharLm("t.txt", steps: 30);
        spec = spec with { Training = spec.Training with { EvalInterval = 10, CheckpointInterval = 10 } };
        var path = tmp.Write("lm.json", JobSpecSerializer.Serialize(spec));
        using var cluster = LocalCluster.Start(2, 0, 1, Path.Combine(tmp.Path, "cluster"), TimeSpan.FromMinutes(2));
        Assert.NotNull(cluster.DashboardUrl);
        var submitted = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(5), "submit", path, "--workers", "2", "--watch", "--plain", "--coordinator", cluster.Address);
        Assert.True(submitted.ExitCode == 0, submitted.ToString());
        var id = submitted.Stdout.Split('\n')[0].Trim();

        cluster.KillCoordinator();
        cluster.RestartCoordinator(TimeSpan.FromMinutes(2));

        var csv = CliRunner.Run(tmp.Path, "metrics", id, "--coordinator", cluster.Address);
        Assert.True(csv.ExitCode == 0, csv.ToString());
        var lines = csv.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var header = lines[0].Split(',');
        Assert.Equal(MetricsTable.Columns, header);
        var rows = lines.Skip(1).Select(l => l.Split(',')).ToList();
        Assert.Equal(Enumerable.Range(1, 30).Select(s => s.ToString(System.Globalization.CultureInfo.InvariantCulture)), rows.Select(r => r[0]));
        var valLoss = Array.IndexOf(header, "val_loss");
        Assert.Equal(["10", "20", "30"], rows.Where(r => r[valLoss] != "").Select(r => r[0]));
        Assert.All(rows, r => Assert.True(double.Parse(r[Array.IndexOf(header, "step_ms")], System.Globalization.CultureInfo.InvariantCulture) > 0));

        var output = Path.Combine(tmp.Path, "out", "m.jsonl");
        var jsonl = CliRunner.Run(tmp.Path, "metrics", id, "--format", "jsonl", "--output", output, "--coordinator", cluster.Address);
        Assert.True(jsonl.ExitCode == 0, jsonl.ToString());
        Assert.Contains($"30 rows of job {id} (succeeded)", jsonl.Stderr, StringComparison.Ordinal);
        var objects = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(30, objects.Count);
        Assert.True(objects[29].GetProperty("val_perplexity").GetDouble() > 1);

        var missing = CliRunner.Run(tmp.Path, "metrics", "job-0099", "--coordinator", cluster.Address);
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("no job \"job-0099\"", missing.Stderr, StringComparison.Ordinal);
    }
}
