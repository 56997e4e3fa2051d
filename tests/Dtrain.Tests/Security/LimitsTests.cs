using Dtrain.Rpc;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Membership;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace Dtrain.Tests.Security;

/// <summary>What one anonymous client can make the coordinator hold: workers per job, pending uploads and their lifetime, call rates.</summary>
public class LimitsTests
{
    static SubmitRequest Synthetic(int workers) => new()
    {
        SpecJson = JobSpecSerializer.Serialize(new JobSpec
        {
            Name = "synthetic",
            Task = TaskKinds.Classification,
            Data = new DataSpec { Format = DataFormats.Synthetic, Synthetic = new SyntheticSpec { Kind = "recall", Distance = 5, Classes = 2, Samples = 40, Seed = 1 } },
            Training = new TrainingSpec { MaxSteps = 1, Threads = 1 },
        }),
        Workers = workers,
    };

    static string UploadBytes(InProcessCluster cluster, TempDir tmp, string name, int bytes)
    {
        var path = tmp.Write(name, new string('a', bytes));
        return Dtrain.Cli.JobCommands.Upload(cluster.Client, path);
    }

    static string UploadDir(InProcessCluster cluster) => Path.Combine(cluster.DataDir, "uploads");

    [Fact]
    public async Task Workers_over_the_per_job_maximum_are_refused_at_submit_with_the_number()
    {
        await using (var defaults = await InProcessCluster.StartAsync(0))
        {
            var e = Assert.Throws<RpcException>(() => defaults.Client.Submit(Synthetic(65)));
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.Contains("workers 65 must be in [0, 64]", e.Status.Detail);
            Assert.Contains("Coordinator:MaxWorkersPerJob = 64", e.Status.Detail);
        }
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { MaxWorkersPerJob = 4 });
        var over = Assert.Throws<RpcException>(() => cluster.Client.Submit(Synthetic(5)));
        Assert.Equal(StatusCode.InvalidArgument, over.StatusCode);
        Assert.Contains("workers 5 must be in [0, 4]", over.Status.Detail);
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
        // At the maximum the job is queued.
        var id = cluster.Client.Submit(Synthetic(4)).JobId;
        Assert.Equal(JobState.Queued, cluster.Client.Get(new GetJobRequest { JobId = id }).State);
    }

    [Fact]
    public async Task Pending_uploads_are_limited_per_client_in_count_and_bytes_and_a_job_using_one_frees_it()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions
        {
            MaxUploadBytes = 1 << 20,
            MaxPendingUploadBytes = 3 << 19, // 1.5 MiB
            MaxPendingUploads = 3,
        });
        UploadBytes(cluster, tmp, "a.txt", 1 << 20);
        var bytes = Assert.Throws<RpcException>(() => UploadBytes(cluster, tmp, "b.txt", 1 << 20));
        Assert.Equal(StatusCode.ResourceExhausted, bytes.StatusCode);
        Assert.Contains("Coordinator:MaxPendingUploadBytes = 1572864", bytes.Status.Detail);
        Assert.Contains("user \"cluster-admin\" already has", bytes.Status.Detail); // the token's holder, not its address (IdentityTests)

        tmp.Write("t.txt", TestJobs.Text());
        var small = Dtrain.Cli.JobCommands.Upload(cluster.Client, Path.Combine(tmp.Path, "t.txt"));
        UploadBytes(cluster, tmp, "c.txt", 100);
        var count = Assert.Throws<RpcException>(() => UploadBytes(cluster, tmp, "d.txt", 100));
        Assert.Equal(StatusCode.ResourceExhausted, count.StatusCode);
        Assert.Contains("3 pending uploads", count.Status.Detail);
        Assert.Contains("Coordinator:MaxPendingUploads = 3", count.Status.Detail);
        // Refused uploads leave nothing behind: 3 files, no parts.
        Assert.Equal(3, Directory.GetFiles(UploadDir(cluster)).Length);

        // A job that uses an upload takes it out of the quota.
        var spec = TestJobs.CharLm("t.txt", steps: 1);
        var request = new SubmitRequest { SpecJson = JobSpecSerializer.Serialize(spec), Workers = 1 };
        request.UploadedFiles["t.txt"] = small;
        cluster.Client.Submit(request);
        UploadBytes(cluster, tmp, "d.txt", 100);
        // Used once: a second job cannot claim the same upload.
        var again = Assert.Throws<RpcException>(() => cluster.Client.Submit(request));
        Assert.Contains("$.data.train: upload", again.Status.Detail);
    }

    [Fact]
    public async Task Unused_uploads_expire_after_the_ttl_on_the_coordinator_clock()
    {
        using var tmp = new TempDir();
        var clock = new FakeTimeProvider(DateTimeOffset.Parse("2030-01-01T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { UploadTtlMinutes = 10, MaxPendingUploads = 1 },
            services => services.AddSingleton<TimeProvider>(clock));
        tmp.Write("t.txt", TestJobs.Text());
        var id = Dtrain.Cli.JobCommands.Upload(cluster.Client, Path.Combine(tmp.Path, "t.txt"));
        var stored = Path.Combine(UploadDir(cluster), id);
        Assert.True(File.Exists(stored));

        clock.Advance(TimeSpan.FromMinutes(9));
        Assert.True(File.Exists(stored), "an upload younger than the TTL was deleted");
        Assert.Equal(StatusCode.ResourceExhausted, Assert.Throws<RpcException>(() => UploadBytes(cluster, tmp, "x.txt", 10)).StatusCode);

        clock.Advance(TimeSpan.FromMinutes(2));
        Assert.False(File.Exists(stored), "an upload unused for longer than the TTL is still there");
        var request = new SubmitRequest { SpecJson = JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 1)), Workers = 1 };
        request.UploadedFiles["t.txt"] = id;
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("$.data.train", e.Status.Detail);
        Assert.Contains("UploadTtlMinutes = 10", e.Status.Detail);
        // The quota is free again.
        UploadBytes(cluster, tmp, "x.txt", 10);
    }

    [Fact]
    public async Task Submissions_and_registrations_over_the_rate_limit_get_ResourceExhausted_per_client()
    {
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions
        {
            SubmitBurst = 2,
            SubmitsPerMinute = 0.01, // one more every 100 minutes: none within the test
            RegistrationBurst = 1,
            RegistrationsPerMinute = 0.01,
        });
        cluster.Client.Submit(Synthetic(1));
        cluster.Client.Submit(Synthetic(1));
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(Synthetic(1)));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Contains("too many job submissions from user \"cluster-admin\"", e.Status.Detail);
        Assert.Contains("Coordinator:SubmitBurst", e.Status.Detail);
        Assert.Contains("retry in", e.Status.Detail);
        Assert.Equal(2, cluster.Client.List(new ListJobsRequest()).Jobs.Count);

        using var channel = GrpcChannel.ForAddress(cluster.Address);
        var membership = new Membership.MembershipClient(channel);
        var register = new RegisterRequest { Address = "http://127.0.0.1:9", Name = "fake", Capabilities = new WorkerCapabilities { Protocol = WireProtocol.Version } };
        membership.Register(register);
        var r = Assert.Throws<RpcException>(() => membership.Register(register));
        Assert.Equal(StatusCode.ResourceExhausted, r.StatusCode);
        Assert.Contains("too many worker registrations from address 127.0.0.1", r.Status.Detail);
        Assert.Contains("Coordinator:RegistrationsPerMinute", r.Status.Detail);
        // Other calls are not limited.
        for (var i = 0; i < 5; i++) cluster.Client.List(new ListJobsRequest());
    }

    [Fact]
    public void Limits_are_validated_naming_the_key()
    {
        var errors = new CoordinatorOptions
        {
            DataRoots = ["relative/dir", "/no/such/dtrain/dir"],
            MaxDataFileBytes = 2L << 30,
            MaxWorkersPerJob = 0,
            MaxPendingUploads = 0,
            UploadTtlMinutes = 0,
            SubmitsPerMinute = -1,
            RegistrationBurst = 0,
        }.Validate();
        foreach (var key in new[] { "\"relative/dir\" must be an absolute path", "\"/no/such/dtrain/dir\" is not an existing directory", "Coordinator:MaxDataFileBytes", "Coordinator:MaxWorkersPerJob", "Coordinator:MaxPendingUploads", "Coordinator:UploadTtlMinutes", "Coordinator:SubmitsPerMinute", "Coordinator:RegistrationBurst" })
            Assert.Contains(errors, e => e.Contains(key, StringComparison.Ordinal));
        Assert.Contains(new CoordinatorOptions { MaxUploadBytes = 2L << 30 }.Validate(), e => e.Contains("MaxUploadBytes", StringComparison.Ordinal));
        Assert.Empty(new CoordinatorOptions().Validate());
        // A data root must not expose the coordinator's own files (other jobs' uploads and checkpoints).
        using var tmp = new TempDir();
        var dataDir = Directory.CreateDirectory(Path.Combine(tmp.Path, "coordinator")).FullName;
        Assert.Contains(new CoordinatorOptions { DataDir = dataDir, DataRoots = [tmp.Path] }.Validate(), e => e.Contains("overlaps the data directory", StringComparison.Ordinal));
        Assert.Contains(new CoordinatorOptions { DataDir = dataDir, DataRoots = [Directory.CreateDirectory(Path.Combine(dataDir, "jobs")).FullName] }.Validate(), e => e.Contains("overlaps", StringComparison.Ordinal));
        Assert.Empty(new CoordinatorOptions { DataDir = dataDir, DataRoots = [Directory.CreateDirectory(Path.Combine(tmp.Path, "data")).FullName] }.Validate());
        // Data roots come from configuration as a list (DTRAIN_Coordinator__DataRoots__0=..., or --Coordinator:DataRoots:0=...).
        var read = CoordinatorHost.ReadOptions(["--Coordinator:DataRoots:0=/srv/a", "--Coordinator:DataRoots:1=/srv/b"]);
        Assert.Equal(["/srv/a", "/srv/b"], read.DataRoots);
    }

    [Fact]
    public void Serve_refuses_a_data_root_that_does_not_exist()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "serve", "--port", "0", "--data-root", "no-such-dir");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("Coordinator:DataRoots", r.Stderr);
        Assert.Contains(Path.Combine(tmp.Path, "no-such-dir"), r.Stderr);
    }
}
