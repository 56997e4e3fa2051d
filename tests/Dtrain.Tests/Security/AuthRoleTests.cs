using Dtrain.Protos.Jobs;
using Dtrain.Server.Auth;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Grpc.Core;
using static Dtrain.Tests.Security.AuthTestSupport;

namespace Dtrain.Tests.Security;

/// <summary>
/// The attacks found by an anonymous client on loopback, against a real coordinator (Kestrel on loopback) with real
/// workers: each call that used to succeed for anyone is now refused unless the token's role and ownership allow it.
/// </summary>
public class AuthRoleTests
{
    [Fact]
    public async Task Calls_without_a_token_or_with_a_wrong_one_are_refused_as_Unauthenticated_and_audited()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var id = SubmitLm(cluster.Client, tmp, "victim", 3);
        var anonymous = cluster.ClientFor(null);

        var calls = new (string Method, Action Call)[]
        {
            ("List", () => anonymous.List(new ListJobsRequest())),
            ("Get", () => anonymous.Get(new GetJobRequest { JobId = id })),
            ("Cancel", () => anonymous.Cancel(new CancelJobRequest { JobId = id })),
            ("ListWorkers", () => anonymous.ListWorkers(new ListWorkersRequest())),
            ("Submit", () => anonymous.Submit(new SubmitRequest { SpecJson = "{}" })),
        };
        foreach (var (method, call) in calls)
        {
            var e = Refused(call);
            Assert.True(e.StatusCode == StatusCode.Unauthenticated, $"{method}: {e}");
            Assert.Contains("requires a bearer token", e.Status.Detail);
        }
        Assert.Equal(StatusCode.Unauthenticated, (await RefusedAsync(() => Drain(anonymous.Watch(new WatchJobRequest { JobId = id })))).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, (await RefusedAsync(() => Drain(anonymous.Download(new DownloadRequest { JobId = id })))).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, Refused(() => Dtrain.Cli.JobCommands.Upload(anonymous, tmp.Write("x.txt", "data"))).StatusCode);

        var forged = cluster.ClientFor("dtr_" + new string('A', 43));
        var wrong = Refused(() => forged.List(new ListJobsRequest()));
        Assert.Equal(StatusCode.Unauthenticated, wrong.StatusCode);
        Assert.Contains("unknown token", wrong.Status.Detail);

        // The job was neither cancelled nor touched; every refusal is in the audit log with its method and reason.
        Assert.NotEqual(JobState.Cancelled, cluster.Client.Get(new GetJobRequest { JobId = id }).State);
        Assert.Contains(Lines(cluster.DataDir, "auth.failed", ("reason", "no token")), l => l.Field("method") == "/dtrain.jobs.v1.Jobs/Cancel");
        Assert.Contains(Lines(cluster.DataDir, "auth.failed", ("reason", "no token")), l => l.Field("method") == "/dtrain.jobs.v1.Jobs/Download");
        Assert.Single(Lines(cluster.DataDir, "auth.failed", ("reason", "unknown token")));
        Assert.All(Lines(cluster.DataDir, "auth.failed"), l => Assert.StartsWith("ipv4:127.0.0.1:", l.Field("peer")));
    }

    [Fact]
    public async Task A_submitter_sees_watches_cancels_and_downloads_only_its_own_jobs()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var (alice, _, aliceToken) = Token(cluster, "alice", Role.Submitter);
        var (bob, _, _) = Token(cluster, "bob", Role.Submitter);

        var id = SubmitLm(alice, tmp, "alices", 4);
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(id, TimeSpan.FromMinutes(2))).State);
        var bobs = SubmitLm(bob, tmp, "bobs", 2);

        // Alice reaches her job; it records her as its owner.
        Assert.Equal("alice", alice.Get(new GetJobRequest { JobId = id }).Owner);
        Assert.Equal([id], alice.List(new ListJobsRequest()).Jobs.Select(j => j.JobId));
        Assert.True(await Drain(alice.Watch(new WatchJobRequest { JobId = id })) > 0);
        var model = Path.Combine(tmp.Path, "alice.dtck");
        Assert.Equal(0, Dtrain.Cli.JobCommands.DownloadTo(alice, id, model));
        Assert.True(new FileInfo(model).Length > 0);

        // Bob does not: his list holds only his job, and every call on hers answers exactly as for a job that does not exist.
        Assert.Equal([bobs], bob.List(new ListJobsRequest()).Jobs.Select(j => j.JobId));
        var missing = Refused(() => bob.Get(new GetJobRequest { JobId = "job-0999" })).Status.Detail.Replace("job-0999", id, StringComparison.Ordinal);
        foreach (var e in new[]
                 {
                     Refused(() => bob.Get(new GetJobRequest { JobId = id })),
                     Refused(() => bob.Cancel(new CancelJobRequest { JobId = id })),
                     await RefusedAsync(() => Drain(bob.Watch(new WatchJobRequest { JobId = id }))),
                     await RefusedAsync(() => Drain(bob.Download(new DownloadRequest { JobId = id }))),
                 })
        {
            Assert.Equal(StatusCode.NotFound, e.StatusCode);
            Assert.Equal(missing, e.Status.Detail);
        }
        // A submitter does not list the workers (their addresses and other users' job ids).
        Assert.Equal(StatusCode.PermissionDenied, Refused(() => bob.ListWorkers(new ListWorkersRequest())).StatusCode);
        Assert.Equal(JobState.Succeeded, cluster.Client.Get(new GetJobRequest { JobId = id }).State);

        // The audit log has alice's submission and download, and bob's four refused attempts.
        var submit = Assert.Single(Lines(cluster.DataDir, "job.submit", ("job", id)));
        Assert.Equal(("alice", "submitter", aliceToken.Id), (submit.Field("user"), submit.Field("role"), submit.Field("token")));
        var download = Assert.Single(Lines(cluster.DataDir, "job.download", ("job", id), ("user", "alice")));
        Assert.Equal(new FileInfo(model).Length.ToString(System.Globalization.CultureInfo.InvariantCulture), download.Field("bytes"));
        Assert.Equal("true", download.Field("complete"));
        Assert.Equal(["cancel", "download", "get", "watch"], Lines(cluster.DataDir, "job.denied", ("user", "bob"), ("job", id), ("owner", "alice")).Select(l => l.Field("action")).Order());
    }

    [Fact]
    public async Task A_viewer_reads_every_job_and_the_workers_but_cannot_submit_or_cancel()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var (alice, _, _) = Token(cluster, "alice", Role.Submitter);
        var (viewer, _, _) = Token(cluster, "dashboard", Role.Viewer);
        var done = SubmitLm(alice, tmp, "done", 3);
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(done, TimeSpan.FromMinutes(2))).State);
        var running = SubmitLm(alice, tmp, "long", 1_000_000);

        Assert.Equal([done, running], viewer.List(new ListJobsRequest()).Jobs.Select(j => j.JobId));
        Assert.Equal("alice", viewer.Get(new GetJobRequest { JobId = done }).Owner);
        Assert.True(await Drain(viewer.Watch(new WatchJobRequest { JobId = done })) > 0);
        Assert.Equal(0, Dtrain.Cli.JobCommands.DownloadTo(viewer, done, Path.Combine(tmp.Path, "v.dtck")));
        Assert.Single(viewer.ListWorkers(new ListWorkersRequest()).Workers);

        var submit = Refused(() => SubmitLm(viewer, tmp, "nope", 3));
        Assert.Equal(StatusCode.PermissionDenied, submit.StatusCode);
        Assert.Contains("role viewer", submit.Status.Detail);
        Assert.Equal(StatusCode.PermissionDenied, Refused(() => viewer.Submit(new SubmitRequest { SpecJson = "{}" })).StatusCode);
        var cancel = Refused(() => viewer.Cancel(new CancelJobRequest { JobId = running }));
        Assert.Equal(StatusCode.PermissionDenied, cancel.StatusCode);
        Assert.Contains("may not cancel jobs", cancel.Status.Detail);
        Assert.NotEqual(JobState.Cancelled, cluster.Client.Get(new GetJobRequest { JobId = running }).State);
        Assert.Equal(2, cluster.Client.List(new ListJobsRequest()).Jobs.Count);
        Assert.Contains(Lines(cluster.DataDir, "auth.denied", ("user", "dashboard")), l => l.Field("method") == "/dtrain.jobs.v1.Jobs/Cancel");

        cluster.Client.Cancel(new CancelJobRequest { JobId = running });
    }

    [Fact]
    public async Task An_admin_sees_cancels_and_downloads_every_job_and_lists_the_workers()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var (alice, _, _) = Token(cluster, "alice", Role.Submitter);
        var (admin, _, _) = Token(cluster, "ops", Role.Admin);
        var done = SubmitLm(alice, tmp, "done", 3);
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(done, TimeSpan.FromMinutes(2))).State);
        var running = SubmitLm(alice, tmp, "long", 1_000_000);

        Assert.Equal([done, running], admin.List(new ListJobsRequest()).Jobs.Select(j => j.JobId));
        Assert.Single(admin.ListWorkers(new ListWorkersRequest()).Workers);
        Assert.Equal(0, Dtrain.Cli.JobCommands.DownloadTo(admin, done, Path.Combine(tmp.Path, "a.dtck")));
        admin.Cancel(new CancelJobRequest { JobId = running });
        Assert.Equal(JobState.Cancelled, (await cluster.WaitAsync(running, TimeSpan.FromMinutes(1))).State);
        // An admin's own submission is owned by it.
        var own = SubmitLm(admin, tmp, "own", 2);
        Assert.Equal("ops", admin.Get(new GetJobRequest { JobId = own }).Owner);

        var cancel = Assert.Single(Lines(cluster.DataDir, "job.cancel", ("job", running)));
        Assert.Equal(("ops", "admin", "alice"), (cancel.Field("user"), cancel.Field("role"), cancel.Field("owner")));
        Assert.Single(Lines(cluster.DataDir, "job.download", ("job", done), ("user", "ops")));
    }

    [Fact]
    public async Task A_revoked_token_is_refused_from_the_next_call_and_a_new_one_works_without_a_restart()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var (alice, _, entry) = Token(cluster, "alice", Role.Submitter);
        var id = SubmitLm(alice, tmp, "mine", 2);
        Assert.Equal("alice", alice.Get(new GetJobRequest { JobId = id }).Owner);

        var result = TokenStore.Revoke(cluster.DataDir, "alice", DateTimeOffset.UtcNow);
        Assert.Equal([entry.Id], result.Revoked.Select(t => t.Id));
        var e = Refused(() => alice.Get(new GetJobRequest { JobId = id }));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Contains($"token {entry.Id} (\"alice\") was revoked", e.Status.Detail);
        Assert.Single(Lines(cluster.DataDir, "auth.failed", ("reason", "revoked token"), ("token", entry.Id)));

        // A rotated token of the same name reaches the same jobs.
        var (rotated, _, _) = Token(cluster, "alice", Role.Submitter);
        Assert.Equal([id], rotated.List(new ListJobsRequest()).Jobs.Select(j => j.JobId));
    }

    [Fact]
    public async Task The_audit_log_records_worker_admission_and_departure_and_token_use_once_per_window()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        var join = Assert.Single(Lines(cluster.DataDir, "worker.join"));
        var worker = join.Field("worker")!;
        Assert.Equal("test-1", join.Field("name"));
        Assert.StartsWith("http://", join.Field("address"));

        var (viewer, _, entry) = Token(cluster, "dash", Role.Viewer);
        for (var i = 0; i < 3; i++) viewer.List(new ListJobsRequest());
        // Coordinator:AuditTokenUseMinutes = 10: the first use is recorded, the next calls within 10 minutes are not.
        Assert.Single(Lines(cluster.DataDir, "token.use", ("token", entry.Id)));

        await cluster.StopWorkerAsync(0);
        var leave = await WaitForLine(cluster.DataDir, "worker.leave", ("worker", worker));
        Assert.Contains("shutting down", leave.Field("reason"));

        // Every line is one JSON object with a UTC time and an event; the file is private to the coordinator's user.
        Assert.All(Audit(cluster.DataDir), l => Assert.EndsWith("Z", l.Field("time")));
        Assert.Equal(SecureFiles.OwnerOnly, File.GetUnixFileMode(Path.Combine(cluster.DataDir, AuditLog.FileName)));
    }
}
