using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Cluster;

/// <summary>The coordinator's contract with users: precise errors, a queue that keeps going, cancellation.</summary>
public class ClusterBehaviourTests
{
    static SubmitRequest Submit(InProcessCluster cluster, TempDir tmp, JobSpec spec, int workers)
    {
        var path = tmp.Write($"{spec.Name}.json", JobSpecSerializer.Serialize(spec));
        return Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), workers);
    }

    static JobSpec SmallLm(TempDir tmp, string name, int steps)
    {
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: steps) with { Name = name };
        return spec with { Training = spec.Training with { EvalInterval = 0, CheckpointInterval = 0 } };
    }

    [Fact]
    public async Task Invalid_spec_is_rejected_at_submit_with_field_paths_before_any_worker_is_touched()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(new SubmitRequest { SpecJson = """{"name":"x","data":{"train":"t.txt"},"model":{"cell":"lstmm"}}""", Source = "bad.json" }));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("$.model.cell", e.Status.Detail);
        Assert.Contains("bad.json", e.Status.Detail);
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
        Assert.All(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers, w => Assert.Equal(WorkerState.Idle, w.State));

        var missing = Assert.Throws<RpcException>(() => cluster.Client.Submit(new SubmitRequest { SpecJson = """{"name":"x","data":{"train":"nowhere.txt"}}""" }));
        Assert.Equal(StatusCode.InvalidArgument, missing.StatusCode);
        Assert.Contains("$.data.train", missing.Status.Detail);
    }

    [Fact]
    public async Task Unknown_job_ids_give_NotFound()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        Assert.Equal(StatusCode.NotFound, Assert.Throws<RpcException>(() => cluster.Client.Get(new GetJobRequest { JobId = "job-9999" })).StatusCode);
        Assert.Equal(StatusCode.NotFound, Assert.Throws<RpcException>(() => cluster.Client.Cancel(new CancelJobRequest { JobId = "job-9999" })).StatusCode);
        var watch = cluster.Client.Watch(new WatchJobRequest { JobId = "nope" });
        Assert.Equal(StatusCode.NotFound, (await Assert.ThrowsAsync<RpcException>(() => watch.ResponseStream.MoveNext(CancellationToken.None))).StatusCode);
    }

    [Fact]
    public async Task Ctrl_C_on_watch_stops_watching_says_the_job_keeps_running_and_leaves_it_running()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var id = cluster.Client.Submit(Submit(cluster, tmp, SmallLm(tmp, "long", 100_000), 1)).JobId;
        var psi = CliRunner.StartInfo(tmp.Path, new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken }, "watch", id, "--plain", "--coordinator", cluster.Address);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try
        {
            while (await p.StandardOutput.ReadLineAsync(timeout.Token) is { } line)
                if (line.StartsWith("step ", StringComparison.Ordinal)) break;
            using (var kill = System.Diagnostics.Process.Start("kill", ["-INT", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!) await kill.WaitForExitAsync(timeout.Token);
            await p.WaitForExitAsync(timeout.Token);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
        Assert.Contains($"stopped watching {id}; it keeps running: `dtrain watch {id}` follows it again, `dtrain cancel {id}` stops it", await stderr);
        Assert.Equal(JobState.Running, cluster.Client.Get(new GetJobRequest { JobId = id }).State);
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
    }

    [Fact]
    public async Task A_classifier_whose_validation_split_is_empty_succeeds_on_a_cluster_as_in_one_process()
    {
        // Three records, one per label: the validation record goes back to training, the split is empty. One process
        // printed "no validation data"; the cluster failed at its evaluation ("this replica holds no validation data").
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        tmp.Write("few.jsonl", "{\"text\":\"red apple\",\"label\":\"a\"}\n{\"text\":\"blue sky\",\"label\":\"b\"}\n{\"text\":\"green leaf\",\"label\":\"c\"}\n");
        var spec = TestJobs.Classifier("few.jsonl", steps: 4) with { Name = "few" };
        spec = spec with { Training = spec.Training with { BatchSize = 2, EvalInterval = 2 } };
        var id = cluster.Client.Submit(Submit(cluster, tmp, spec, 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(1));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.Equal(0, info.LastEval.Count);
        Assert.True(double.IsNaN(info.LastEval.Loss));
    }

    [Fact]
    public async Task Malformed_dataset_fails_the_job_with_file_and_line_and_the_next_job_still_runs()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        tmp.Write("bad.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\"}\n{\"text\": oops}\n");
        var bad = TestJobs.Classifier("bad.jsonl") with { Name = "bad" };
        var id = cluster.Client.Submit(Submit(cluster, tmp, bad, 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains("bad.jsonl:3", info.Message);
        // Named as the spec named it, not by the copy the coordinator stores under its jobs/ directory.
        Assert.StartsWith("bad.jsonl:3", info.Message);
        Assert.DoesNotContain("jobs", info.Message);

        var good = cluster.Client.Submit(Submit(cluster, tmp, SmallLm(tmp, "good", 5), 2)).JobId;
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(good, TimeSpan.FromMinutes(1))).State);
    }

    [Fact]
    public async Task Cancel_mid_job_stops_it_and_frees_the_workers_for_the_next_job()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        var id = cluster.Client.Submit(Submit(cluster, tmp, SmallLm(tmp, "long", 100_000), 2)).JobId;
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (cluster.Client.Get(new GetJobRequest { JobId = id }).Step < 3)
        {
            Assert.True(DateTime.UtcNow < deadline, "job never started");
            await Task.Delay(50);
        }
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
        var info = await cluster.WaitAsync(id, TimeSpan.FromSeconds(60));
        Assert.Equal(JobState.Cancelled, info.State);
        Assert.True(info.Step < 100_000);
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(10));
        var next = cluster.Client.Submit(Submit(cluster, tmp, SmallLm(tmp, "after", 5), 2)).JobId;
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(next, TimeSpan.FromMinutes(1))).State);
    }

    [Fact]
    public async Task Two_jobs_queued_back_to_back_both_succeed_in_order()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2);
        var first = cluster.Client.Submit(Submit(cluster, tmp, SmallLm(tmp, "first", 15), 2)).JobId;
        var second = cluster.Client.Submit(Submit(cluster, tmp, SmallLm(tmp, "second", 15), 2)).JobId;
        Assert.Equal(JobState.Queued, cluster.Client.Get(new GetJobRequest { JobId = second }).State);
        var a = await cluster.WaitAsync(first, TimeSpan.FromMinutes(1));
        var b = await cluster.WaitAsync(second, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Succeeded, a.State);
        Assert.Equal(JobState.Succeeded, b.State);
        Assert.True(b.StartedUnixMs >= a.FinishedUnixMs, "the second job started before the first finished although both need every worker");
        Assert.Equal(15, b.Step);
        // The final model downloads intact (the CLI verifies its checksum) and loads.
        var model = System.IO.Path.Combine(tmp.Path, "second.dtck");
        Assert.Equal(0, Dtrain.Cli.JobCommands.DownloadTo(cluster.Client, second, model));
        using var trained = Dtrain.Inference.TrainedModel.Load(model);
        Assert.Equal(15, trained.State.Step);
    }

    [Fact]
    public async Task Oversized_message_is_refused_with_a_clear_status_and_large_files_travel_in_chunks()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { MaxMessageBytes = 1024 * 1024, MaxUploadBytes = 8 * 1024 * 1024 });
        // One message over the limit is refused...
        var huge = new SubmitRequest { SpecJson = "{\"name\":\"" + new string('x', 2 * 1024 * 1024) + "\"}" };
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(huge));
        Assert.True(e.StatusCode == StatusCode.ResourceExhausted, e.ToString());
        // ...while a data file three times the message limit is uploaded in chunks and trains.
        tmp.Write("big.txt", string.Concat(Enumerable.Repeat(TestJobs.Text(1), 3 * 1024 * 1024 / TestJobs.Text(1).Length + 1)));
        var spec = SmallLm(tmp, "big", 3) with { Data = new DataSpec { Format = DataFormats.Text, Train = "big.txt" } };
        var id = cluster.Client.Submit(Submit(cluster, tmp, spec, 1)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        // An upload over MaxUploadBytes is refused.
        tmp.Write("too-big.txt", new string('a', 9 * 1024 * 1024));
        var tooBig = Assert.Throws<RpcException>(() => Dtrain.Cli.JobCommands.Upload(cluster.Client, System.IO.Path.Combine(tmp.Path, "too-big.txt")));
        Assert.Equal(StatusCode.ResourceExhausted, tooBig.StatusCode);
        Assert.Contains("MaxUploadBytes", tooBig.Status.Detail);
    }
}
