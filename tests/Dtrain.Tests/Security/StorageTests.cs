using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;
using static Dtrain.Tests.Security.AuthTestSupport;

namespace Dtrain.Tests.Security;

/// <summary>
/// What the coordinator keeps on disk: owner-only files and directories, a per-owner quota on stored bytes (refused
/// with the quota and the usage; reported by `list` and the dashboard), and jobs' data files expiring after they end.
/// </summary>
public class StorageTests
{
    /// <summary>A queued job (no worker) whose data travels inline in the submission.</summary>
    static SubmitRequest Inline(string name, int bytes)
    {
        var text = TestJobs.Text(bytes / TestJobs.Text(1).Length + 1)[..bytes];
        var request = new SubmitRequest { SpecJson = JobSpecSerializer.Serialize(TestJobs.CharLm("train.txt", steps: 3) with { Name = name }), Workers = 1, Source = name + ".json" };
        request.Files.Add("train.txt", ByteString.CopyFromUtf8(text));
        return request;
    }

    static async Task Until(Func<bool> condition, string what)
    {
        // The scheduling loop runs at least once a second; a minute is a generous bound on a slow machine.
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException(what);
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task Job_data_uploads_checkpoints_and_the_job_store_are_owner_only()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        // A job whose data is uploaded and that writes checkpoints; one whose data is inline; an upload no job claimed yet.
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: 4) with { Training = TestJobs.CharLm("t.txt").Training with { MaxSteps = 4, CheckpointInterval = 2 } };
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("job.json", JobSpecSerializer.Serialize(spec))), 1);
        var info = await cluster.WaitAsync(cluster.Client.Submit(request).JobId, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        var inline = cluster.Client.Submit(Inline("inline", 3000)).JobId;
        Dtrain.Cli.JobCommands.Upload(cluster.Client, Path.Combine(tmp.Path, "t.txt"));

        var dirs = Directory.EnumerateDirectories(cluster.DataDir, "*", SearchOption.AllDirectories).Prepend(cluster.DataDir).ToList();
        var files = Directory.EnumerateFiles(cluster.DataDir, "*", SearchOption.AllDirectories).ToList();
        foreach (var expected in new[] { "jobs.db", $"jobs/{info.JobId}/data/train-t.txt", $"jobs/{inline}/data/train-train.txt", $"jobs/{info.JobId}/spec.json", $"jobs/{info.JobId}/ledger.jsonl" })
            Assert.Contains(Path.Combine(cluster.DataDir, expected), files);
        Assert.Contains(files, f => f.Contains("/checkpoints/ckpt-", StringComparison.Ordinal));
        Assert.Contains(files, f => Path.GetDirectoryName(f) == Path.Combine(cluster.DataDir, "uploads"));
        var open = dirs.Where(d => File.GetUnixFileMode(d) != PrivateFiles.DirectoryMode).Select(d => $"{d} {SecureFiles.Octal(File.GetUnixFileMode(d))}")
            .Concat(files.Where(f => (File.GetUnixFileMode(f) & ~PrivateFiles.FileMode) != 0).Select(f => $"{f} {SecureFiles.Octal(File.GetUnixFileMode(f))}")).ToList();
        Assert.True(open.Count == 0, "not owner-only:\n" + string.Join('\n', open));
    }

    [Fact]
    public async Task A_submission_over_the_owners_quota_is_refused_naming_quota_and_usage_and_list_reports_it()
    {
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { MaxStoredBytesPerOwner = 10_000, JobDataRetentionMinutes = 0, HttpPort = 0 });
        var (alice, aliceToken, _) = Token(cluster, "alice", Role.Submitter);
        var (bob, _, _) = Token(cluster, "bob", Role.Submitter);

        var first = alice.Submit(Inline("first", 4000)).JobId;
        var used = alice.List(new ListJobsRequest()).Storage.Single();
        Assert.Equal("alice", used.Owner);
        Assert.Equal(10_000, used.QuotaBytes);
        Assert.InRange(used.StoredBytes, 4000, 8000); // the data file and the job's spec (as it runs, as submitted, as on the client)
        Assert.Equal(used.StoredBytes, alice.Get(new GetJobRequest { JobId = first }).StoredBytes);

        var e = Assert.Throws<RpcException>(() => alice.Submit(Inline("second", 5000)));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Contains("owner \"alice\" stores", e.Status.Detail);
        Assert.Contains($"({used.StoredBytes:N0} bytes)", e.Status.Detail);
        Assert.Contains("this job brings 5 kB (5,000 bytes)", e.Status.Detail);
        Assert.Contains("Coordinator:MaxStoredBytesPerOwner = 10 kB (10,000 bytes)", e.Status.Detail);
        Assert.Single(alice.List(new ListJobsRequest()).Jobs);
        // Another owner has a quota of its own.
        bob.Submit(Inline("bobs", 5000));
        // An admin sees everyone's storage; a submitter only its own.
        Assert.Equal(["alice", "bob"], cluster.Client.List(new ListJobsRequest()).Storage.Select(s => s.Owner));
        Assert.Equal(["bob"], bob.List(new ListJobsRequest()).Storage.Select(s => s.Owner));
        // The dashboard shows the same: each job's stored bytes, and each visible owner's storage with the quota.
        using (var http = new HttpClient { BaseAddress = new Uri(cluster.HttpAddress!) })
        {
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", aliceToken);
            var storage = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync("/api/storage")).RootElement.EnumerateArray().Single();
            Assert.Equal("alice", storage.GetProperty("owner").GetString());
            Assert.Equal(used.StoredBytes, storage.GetProperty("stored_bytes").GetInt64());
            Assert.Equal(10_000, storage.GetProperty("quota_bytes").GetInt64());
            var job = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync("/api/jobs")).RootElement.EnumerateArray().Single();
            Assert.Equal(used.StoredBytes, job.GetProperty("stored_bytes").GetInt64());
        }
        var line = Dtrain.Cli.JobCommands.StorageLine(used);
        Assert.Matches(@"^storage of alice: [0-9.]+ kB of 10 kB \([0-9]+%, Coordinator:MaxStoredBytesPerOwner\)$", line);

        // Cancelled, its data expires (retention 0): alice's storage comes back under the quota.
        alice.Cancel(new CancelJobRequest { JobId = first });
        await Until(() => alice.List(new ListJobsRequest()).Storage.Single().StoredBytes < 4000, "the cancelled job's data did not expire");
        alice.Submit(Inline("second", 5000));
    }

    [Fact]
    public async Task Inline_and_uploaded_data_expire_with_the_job_retention_after_it_ends()
    {
        using var tmp = new TempDir();
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2030-01-01T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { JobDataRetentionMinutes = 60 },
            services => services.AddSingleton<TimeProvider>(clock));
        // A 60 MB inline file is what stayed on disk for good; a few MB show the same. Cancelled while queued.
        var inline = cluster.Client.Submit(Inline("inline", 3 << 20)).JobId;
        cluster.Client.Cancel(new CancelJobRequest { JobId = inline });
        string Data(string id) => Path.Combine(cluster.DataDir, "jobs", id, "data");
        Assert.True(Directory.Exists(Data(inline)));

        // Half an hour later, a job with uploaded data runs to its end.
        clock.Advance(TimeSpan.FromMinutes(30));
        tmp.Write("t.txt", TestJobs.Text());
        var uploaded = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client,
            new FileInfo(tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 3) with { Name = "uploaded" }))), 1)).JobId;
        await cluster.AddWorkerAsync();
        var info = await cluster.WaitAsync(uploaded, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        Assert.True(Directory.Exists(Data(inline)) && Directory.Exists(Data(uploaded)), "data expired within its retention");
        Assert.True(cluster.Client.Get(new GetJobRequest { JobId = inline }).StoredBytes > 3 << 20);

        clock.Advance(TimeSpan.FromMinutes(31));
        await Until(() => !Directory.Exists(Data(inline)), "the inline data did not expire 61 min after its job was cancelled");
        Assert.True(Directory.Exists(Data(uploaded)), "the uploaded data expired 31 min after its job ended");
        clock.Advance(TimeSpan.FromMinutes(30));
        await Until(() => !Directory.Exists(Data(uploaded)), "the uploaded data did not expire 61 min after its job ended");

        // The jobs stay listed and downloadable, with their storage measured again; resuming one as it was names why
        // its data is gone and what to do.
        await Until(() => cluster.Client.Get(new GetJobRequest { JobId = inline }).StoredBytes < 10_000, "the job's storage was not measured again");
        Assert.Equal(JobState.Cancelled, cluster.Client.Get(new GetJobRequest { JobId = inline }).State);
        Assert.True(File.Exists(Path.Combine(cluster.DataDir, "jobs", uploaded, "checkpoints", cluster.Client.Get(new GetJobRequest { JobId = uploaded }).Checkpoint)));
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(new SubmitRequest { ResumeJob = uploaded, Workers = 1 }));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains($"job {uploaded}'s data files were deleted 60 min after it ended (Coordinator:JobDataRetentionMinutes)", e.Status.Detail);
        Assert.Contains($"dtrain submit JOB.json --resume {uploaded}", e.Status.Detail);
    }
}
