using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Membership;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using static Dtrain.Tests.Security.AuthTestSupport;

namespace Dtrain.Tests.Security;

/// <summary>
/// Who a caller is, against a real coordinator on real sockets: a worker's name and address belong to the key that
/// registered them; per-client limits follow the token (or certificate), not the source address; revoking a token
/// ends the streams opened with it; the CLI does not send a token in plaintext beyond loopback without --insecure.
/// </summary>
public class IdentityTests
{
    const string JoinToken = "correct-horse-battery-staple";

    static RegisterRequest Registration(string address, string name, ECDsa? key, string joinToken = "") => new()
    {
        Address = address,
        Name = name,
        JoinToken = joinToken,
        Csr = key is null ? ByteString.Empty : ByteString.CopyFrom(WorkerSecurity.SigningRequest(key, name == "" ? "worker" : name)),
        Capabilities = new WorkerCapabilities { Cores = 1, Protocol = WireProtocol.Version },
    };

    static ECDsa NewKey() => ECDsa.Create(ECCurve.NamedCurves.nistP256);

    static async Task<JobInfo> WaitForStep(Jobs.JobsClient client, string id, long step)
    {
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            var info = client.Get(new GetJobRequest { JobId = id });
            if (info.State == JobState.Running && info.Step >= step) return info;
            Assert.True(info.State is JobState.Queued or JobState.Preparing or JobState.Running, $"{id} {info.State}: {info.Message}");
            Assert.True(DateTime.UtcNow < deadline, $"{id} did not reach step {step} (at {info.Step}, {info.State})");
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task A_newcomer_with_the_bootstrap_certificate_or_a_join_token_cannot_take_a_live_workers_name_or_address_and_its_job_keeps_it()
    {
        using var pki = new TestPki();
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(2, new CoordinatorOptions { JoinTokens = [JoinToken] }, pki: pki);
        var id = SubmitLm(cluster.Client, tmp, "long", steps: 1_000_000, workers: 2);
        var running = await WaitForStep(cluster.Client, id, 3);
        var registry = cluster.CoordinatorService<WorkerRegistry>();
        var victim = registry.Snapshot().Single(w => w.Name == "test-2");
        Assert.Contains(victim.Id, running.WorkerIds);

        using var bootstrap = pki.Channel(cluster.Address, pki.TlsOf(pki.WorkerDir).Certificate, ExpectedPeer.Coordinator);
        using var anonymous = pki.Channel(cluster.Address, null, ExpectedPeer.Coordinator);
        foreach (var (channel, joinToken) in new[] { (bootstrap, ""), (anonymous, JoinToken) })
        {
            var membership = new Membership.MembershipClient(channel);
            using var key = NewKey();
            // Its name and its address, as the eviction was done.
            var name = Refused(() => membership.Register(Registration(victim.Address, "test-2", key, joinToken)));
            Assert.Equal(StatusCode.AlreadyExists, name.StatusCode);
            Assert.Contains($"worker name \"test-2\" is held by worker {victim.Id} at {victim.Address} (training in {id}", name.Status.Detail);
            Assert.Contains("registered with another key", name.Status.Detail);
            // Its address under another name (spelled otherwise), or under none.
            foreach (var (address, other) in new[] { (victim.Address.ToUpperInvariant() + "/", "not-test-2"), (victim.Address, "") })
            {
                var taken = Refused(() => membership.Register(Registration(address, other, key, joinToken)));
                Assert.Equal(StatusCode.AlreadyExists, taken.StatusCode);
                Assert.Contains($"is held by worker {victim.Id} \"test-2\" (training in {id}", taken.Status.Detail);
            }
        }

        // The job keeps its worker: same generation, same workers, and it goes on.
        var after = await WaitForStep(cluster.Client, id, running.Step + 3);
        Assert.Equal(running.Generation, after.Generation);
        Assert.Equal(running.WorkerIds, after.WorkerIds);
        Assert.Equal(MembershipState.Training, registry.StateOf(victim.Id));
        Assert.Equal(2, cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Count);
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
    }

    [Fact]
    public async Task The_key_that_registered_a_name_registers_again_under_it_and_once_its_worker_is_lost_the_name_is_free()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(0, pki: pki);
        var registry = cluster.CoordinatorService<WorkerRegistry>();
        using var bootstrap = pki.Channel(cluster.Address, pki.TlsOf(pki.WorkerDir).Certificate, ExpectedPeer.Coordinator);
        var membership = new Membership.MembershipClient(bootstrap);
        const string address = "https://127.0.0.1:45678";
        using var mine = NewKey();
        using var theirs = NewKey();

        var first = membership.Register(Registration(address, "gpu-a", mine));
        // The same key again (a lost reply, a restart that kept its key): the same worker; the old registration is replaced.
        var again = membership.Register(Registration(address, "gpu-a", mine));
        Assert.NotEqual(first.WorkerId, again.WorkerId);
        Assert.Equal(MembershipState.Lost, registry.StateOf(first.WorkerId));
        Assert.Equal(MembershipState.Joining, registry.StateOf(again.WorkerId));
        // Another key: refused, and the holder is untouched.
        var refused = Refused(() => membership.Register(Registration(address, "gpu-a", theirs)));
        Assert.Equal(StatusCode.AlreadyExists, refused.StatusCode);
        Assert.Contains($"worker name \"gpu-a\" is held by worker {again.WorkerId}", refused.Status.Detail);
        Assert.Equal(MembershipState.Joining, registry.StateOf(again.WorkerId));
        // Once the holder is lost, the name and the address are free for another key.
        registry.MarkLost(again.WorkerId, "test");
        var other = membership.Register(Registration(address, "gpu-a", theirs));
        Assert.Equal(MembershipState.Joining, registry.StateOf(other.WorkerId));
    }

    [Theory]
    [InlineData("https://LOCALHOST:7000/")]
    [InlineData("https://127.1:7000")]
    [InlineData("https://[::ffff:127.0.0.1]:7000")]
    [InlineData("HTTPS://127.0.0.1:7000/x")]
    public void Another_spelling_of_a_live_workers_address_is_its_address(string spelling)
    {
        var registry = new WorkerRegistry(new CoordinatorOptions(), TimeProvider.System, Microsoft.Extensions.Logging.Abstractions.NullLogger<WorkerRegistry>.Instance);
        var holder = registry.Register(new Dtrain.Cluster.WorkerRegistration("https://127.0.0.1:7000", "gpu-a", Dtrain.Cluster.WorkerCapabilities.Unknown) { Key = "AA" });
        var e = Assert.Throws<WorkerNameTakenException>(() => registry.Register(new Dtrain.Cluster.WorkerRegistration(spelling, "other", Dtrain.Cluster.WorkerCapabilities.Unknown) { Key = "BB" }));
        Assert.Contains($"address {spelling} is held by worker {holder.Id} \"gpu-a\"", e.Message);
        // Another port is another address.
        registry.Register(new Dtrain.Cluster.WorkerRegistration("https://127.0.0.1:7001", "other", Dtrain.Cluster.WorkerCapabilities.Unknown) { Key = "BB" });
    }

    /// <summary>A channel whose connections come from <paramref name="source"/> (a loopback address other than 127.0.0.1).</summary>
    static GrpcChannel From(string source, string address) => GrpcChannel.ForAddress(address, new GrpcChannelOptions
    {
        HttpHandler = new SocketsHttpHandler
        {
            ConnectCallback = async (context, cancel) =>
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    socket.Bind(new IPEndPoint(IPAddress.Parse(source), 0));
                    await socket.ConnectAsync(context.DnsEndPoint, cancel);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        },
    });

    static Jobs.JobsClient Client(GrpcChannel channel, string? token) => token is null
        ? new Jobs.JobsClient(channel)
        : new Jobs.JobsClient(channel.Intercept(m => { m.Add("authorization", "Bearer " + token); return m; }));

    static string Upload(Jobs.JobsClient client, TempDir tmp, string name) => Dtrain.Cli.JobCommands.Upload(client, tmp.Write(name, "some bytes"));

    static SubmitRequest Synthetic() => new()
    {
        SpecJson = JobSpecSerializer.Serialize(new JobSpec
        {
            Name = "synthetic",
            Task = TaskKinds.Classification,
            Data = new DataSpec { Format = DataFormats.Synthetic, Synthetic = new SyntheticSpec { Kind = "recall", Distance = 5, Classes = 2, Samples = 40, Seed = 1 } },
            Training = new TrainingSpec { MaxSteps = 1, Threads = 1 },
        }),
        Workers = 1,
    };

    [Fact]
    public async Task Per_client_limits_follow_the_token_from_every_source_address()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { MaxPendingUploads = 2, SubmitBurst = 2, SubmitsPerMinute = 0.01 });
        var (_, alice, _) = Token(cluster, "alice", Role.Submitter);
        var (_, bob, _) = Token(cluster, "bob", Role.Submitter);
        using var from11 = From("127.0.0.11", cluster.Address);
        using var from14 = From("127.0.0.14", cluster.Address);
        var (alice11, alice14, bob11) = (Client(from11, alice), Client(from14, alice), Client(from11, bob));

        Upload(alice11, tmp, "a.txt");
        Upload(alice14, tmp, "b.txt");
        var upload = Refused(() => Upload(alice14, tmp, "c.txt"));
        Assert.Equal(StatusCode.ResourceExhausted, upload.StatusCode);
        Assert.Contains("user \"alice\" already has 2 pending uploads", upload.Status.Detail);
        Assert.Contains("Coordinator:MaxPendingUploads = 2", upload.Status.Detail);
        Assert.Equal(StatusCode.ResourceExhausted, Refused(() => Upload(alice11, tmp, "c.txt")).StatusCode);
        // Another user from the same address has an allowance of its own.
        Upload(bob11, tmp, "d.txt");

        alice11.Submit(Synthetic());
        alice14.Submit(Synthetic());
        var submit = Refused(() => alice11.Submit(Synthetic()));
        Assert.Equal(StatusCode.ResourceExhausted, submit.StatusCode);
        Assert.Contains("too many job submissions from user \"alice\"", submit.Status.Detail);
        bob11.Submit(Synthetic());
    }

    [Fact]
    public async Task Without_any_identity_limits_fall_back_to_the_address_and_a_join_token_is_one_registrant()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions
        {
            Auth = "off", MaxPendingUploads = 1, JoinTokens = [JoinToken], RegistrationBurst = 1, RegistrationsPerMinute = 0.01,
        });
        using var from11 = From("127.0.0.11", cluster.Address);
        using var from14 = From("127.0.0.14", cluster.Address);
        Upload(Client(from11, null), tmp, "a.txt");
        var upload = Refused(() => Upload(Client(from11, null), tmp, "b.txt"));
        Assert.Contains("address 127.0.0.11 already has 1 pending uploads", upload.Status.Detail);
        Upload(Client(from14, null), tmp, "c.txt");

        // Registrations with one join token count together, wherever they come from.
        new Membership.MembershipClient(from11).Register(Registration("http://127.0.0.1:9", "fake-1", null, JoinToken));
        var register = Refused(() => new Membership.MembershipClient(from14).Register(Registration("http://127.0.0.1:10", "fake-2", null, JoinToken)));
        Assert.Equal(StatusCode.ResourceExhausted, register.StatusCode);
        Assert.Contains("too many worker registrations from join token sha256 ", register.Status.Detail);
        Assert.DoesNotContain(JoinToken, register.Status.Detail);
    }

    static async Task<RpcException> EndsWith(IAsyncStreamReader<JobEvent> stream)
    {
        using var bound = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        return await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await stream.MoveNext(bound.Token)) { }
        });
    }

    [Fact]
    public async Task Revoking_a_token_ends_the_watch_and_the_upload_opened_with_it_and_no_other()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var (alice, _, entry) = Token(cluster, "alice", Role.Submitter);
        var id = SubmitLm(alice, tmp, "long", steps: 1_000_000);
        using var watch = alice.Watch(new WatchJobRequest { JobId = id });
        Assert.True(await watch.ResponseStream.MoveNext(CancellationToken.None));
        using var adminWatch = cluster.Client.Watch(new WatchJobRequest { JobId = id });
        Assert.True(await adminWatch.ResponseStream.MoveNext(CancellationToken.None));
        // An upload in progress: the first of two chunks sent.
        using var upload = alice.Upload();
        await upload.RequestStream.WriteAsync(new FileChunk { Name = "half.txt", TotalBytes = 20, Data = ByteString.CopyFromUtf8("0123456789") });
        await WaitForUploadToStart(cluster);

        TokenStore.Revoke(cluster.DataDir, entry.Id, DateTimeOffset.UtcNow);

        var ended = await EndsWith(watch.ResponseStream);
        Assert.Equal(StatusCode.Unauthenticated, ended.StatusCode);
        Assert.Contains($"token {entry.Id} (\"alice\") was revoked at ", ended.Status.Detail);
        Assert.EndsWith("this watch ended", ended.Status.Detail);
        var uploadEnded = await Assert.ThrowsAsync<RpcException>(() => upload.ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, uploadEnded.StatusCode);
        Assert.EndsWith("this upload ended", uploadEnded.Status.Detail);
        Assert.Empty(Directory.GetFiles(Path.Combine(cluster.DataDir, "uploads")));
        Assert.Equal(2, Lines(cluster.DataDir, "stream.ended", ("token", entry.Id)).Count);

        // Another token's watch of the same job goes on.
        Assert.True(await adminWatch.ResponseStream.MoveNext(CancellationToken.None));
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
    }

    [Fact]
    public async Task Revoking_a_token_ends_the_dashboards_event_streams_opened_with_it()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { HttpPort = 0 });
        var (alice, _, _) = Token(cluster, "alice", Role.Submitter);
        var id = SubmitLm(alice, tmp, "long", steps: 1_000_000);
        using var http = new HttpClient { BaseAddress = new Uri(cluster.HttpAddress!), Timeout = TimeSpan.FromMinutes(2) };
        using var bound = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        foreach (var path in new[] { $"/api/jobs/{id}/events", "/api/stream" })
        {
            var (_, again, renewed) = Token(cluster, "alice", Role.Submitter);
            http.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", again);
            using var reply = await http.GetAsync(path, HttpCompletionOption.ResponseHeadersRead, bound.Token);
            Assert.Equal(HttpStatusCode.OK, reply.StatusCode);
            await using var body = await reply.Content.ReadAsStreamAsync(bound.Token);
            var events = System.Net.ServerSentEvents.SseParser.Create(body).EnumerateAsync(bound.Token).GetAsyncEnumerator(bound.Token);
            Assert.True(await events.MoveNextAsync());
            TokenStore.Revoke(cluster.DataDir, renewed.Id, DateTimeOffset.UtcNow);
            // The stream ends (its last event may still be read); the bound fails the test with a cancellation instead.
            while (await events.MoveNextAsync()) { }
            await events.DisposeAsync();
            Assert.Single(Lines(cluster.DataDir, "stream.ended", ("token", renewed.Id)));
        }
        // The job the streams showed goes on: revoking a token does not stop the jobs it submitted.
        Assert.Contains(cluster.Client.Get(new GetJobRequest { JobId = id }).State, new[] { JobState.Preparing, JobState.Running });
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
    }

    static async Task WaitForUploadToStart(InProcessCluster cluster)
    {
        var dir = Path.Combine(cluster.DataDir, "uploads");
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (!(Directory.Exists(dir) && Directory.GetFiles(dir, "*.part").Length > 0))
        {
            Assert.True(DateTime.UtcNow < deadline, "the upload never started");
            await Task.Delay(20);
        }
    }

    [Fact]
    public void The_cli_refuses_to_send_a_token_over_plain_http_beyond_loopback_unless_insecure()
    {
        using var tmp = new TempDir();
        // A host that never resolves (RFC 6761 .invalid): nothing leaves this machine whatever the CLI does.
        const string address = "http://dtrain-test.invalid:5000";
        var env = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = "dtr_not-a-real-token" };
        var refused = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), env, "workers", "--coordinator", address);
        Assert.True(refused.ExitCode == 2, refused.ToString());
        Assert.Contains($"refusing to send the token from $DTRAIN_TOKEN unencrypted to {address}", refused.Stderr);
        Assert.Contains("--insecure", refused.Stderr);

        // With --insecure it is sent (with a warning): the host cannot be reached, exit status 1.
        var insecure = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(2), env, "workers", "--coordinator", address, "--insecure");
        Assert.True(insecure.ExitCode == 1, insecure.ToString());
        Assert.Contains($"warning: sending the token from $DTRAIN_TOKEN unencrypted to {address} (--insecure)", insecure.Stderr);
        Assert.Contains("unreachable", insecure.Stderr);

        // One --insecure, in every verb's --help (serve's and worker's included: theirs is the same option).
        foreach (var verb in new[] { "workers", "serve", "worker" })
        {
            var help = CliRunner.Run(tmp.Path, verb, "--help");
            Assert.Single(System.Text.RegularExpressions.Regex.Matches(help.Stdout, @"--insecure\s"));
            Assert.Contains("send the token over plain http://", help.Stdout);
            Assert.Contains("WITHOUT TLS or authentication", help.Stdout);
        }
    }
}
