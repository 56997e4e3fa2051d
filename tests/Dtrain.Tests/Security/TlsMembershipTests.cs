using System.Security.Cryptography.X509Certificates;
using Dtrain.Protos.Jobs;
using Dtrain.Protos.Membership;
using Dtrain.Protos.Worker;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Google.Protobuf;
using Grpc.Core;

namespace Dtrain.Tests.Security;

/// <summary>
/// The attacks on membership and worker control, against a real coordinator and real workers over mutual TLS on
/// loopback: a phantom Register without proof, heartbeat/leave for another worker, and anyone but the coordinator
/// driving a worker. Each attack is refused with a precise status, and the cluster keeps working.
/// </summary>
public class TlsMembershipTests
{
    static int registrations;

    /// <summary>A registration under a name of its own (one live worker holds a name at a time).</summary>
    static RegisterRequest Registration(string address = "https://127.0.0.1:1", string token = "")
    {
        var (key, csr) = WorkerSecurity.NewSigningRequest("phantom");
        key.Dispose();
        var name = $"phantom-{Interlocked.Increment(ref registrations)}";
        return new RegisterRequest { Address = address, Name = name, JoinToken = token, Csr = ByteString.CopyFrom(csr), Capabilities = new WorkerCapabilities { Cores = 1, Protocol = WireProtocol.Version } };
    }

    static RpcException Refused(Func<object> call) => Assert.Throws<RpcException>(call);

    [Theory]
    [InlineData("http://192.0.2.77:5000")]
    [InlineData("http://coordinator.example.com:5000")]
    [InlineData("http://[2001:db8::7]:5000")]
    public void A_worker_refuses_to_send_its_join_token_over_plain_http_beyond_loopback(string coordinator)
    {
        // A mistyped http:// would have put the join token on the network in the clear, in the registration.
        var e = Assert.Throws<ArgumentException>(() => WorkerSecurity.Create(new WorkerOptions { Coordinator = coordinator, JoinToken = "correct-horse-battery-staple" }));
        Assert.Contains($"refusing to send the join token unencrypted to {coordinator}", e.Message);
        Assert.DoesNotContain("correct-horse", e.Message);
        // On loopback (dtrain cluster, tests) it stays allowed, and without a token nothing is sent.
        Assert.NotNull(WorkerSecurity.Create(new WorkerOptions { Coordinator = "http://127.0.0.1:5000", JoinToken = "correct-horse-battery-staple" }));
        Assert.NotNull(WorkerSecurity.Create(new WorkerOptions { Coordinator = coordinator }));
    }

    [Fact]
    public async Task Register_without_proof_is_refused_and_no_phantom_worker_appears()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { JoinTokens = ["correct-horse-battery-staple"] }, pki: pki);

        // No certificate at all (only the CA, to trust the coordinator).
        using (var anonymous = pki.Channel(cluster.Address, null, ExpectedPeer.Coordinator))
        {
            var e = Refused(() => new Membership.MembershipClient(anonymous).Register(Registration()));
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
            Assert.Contains("must prove it may join", e.Status.Detail);
            var wrongToken = Refused(() => new Membership.MembershipClient(anonymous).Register(Registration(token: "not-the-token-at-all")));
            Assert.Equal(StatusCode.PermissionDenied, wrongToken.StatusCode);
            Assert.Contains("join token", wrongToken.Status.Detail);
        }
        // A client (CLI) certificate of this cluster is no worker certificate.
        using (var client = pki.Channel(cluster.Address, pki.Issue("mallory", ClusterRoles.Client), ExpectedPeer.Coordinator))
        {
            var e = Refused(() => new Membership.MembershipClient(client).Register(Registration()));
            Assert.Equal(StatusCode.PermissionDenied, e.StatusCode);
            Assert.Contains("is not a worker certificate", e.Status.Detail);
        }
        // A worker certificate from another CA proves nothing here.
        using (var otherCa = ClusterCertificates.CreateAuthority("other CA", TimeSpan.FromDays(1)))
        using (var stranger = Channels.Create(cluster.Address, pki.Tls(ClusterCertificates.Issue(otherCa, "worker", ClusterRoles.Worker, ["127.0.0.1"], TimeSpan.FromDays(1))), ExpectedPeer.Coordinator))
        {
            var e = Refused(() => new Membership.MembershipClient(stranger).Register(Registration()));
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        }
        Assert.Empty(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers);

        // The two proofs that are accepted: a worker certificate of the cluster CA, and a join token. Each gets its own
        // certificate, signed by the cluster CA for its worker id, for the key of its signing request.
        using (var bootstrap = pki.Channel(cluster.Address, pki.TlsOf(pki.WorkerDir).Certificate, ExpectedPeer.Coordinator))
        using (var anonymous = pki.Channel(cluster.Address, null, ExpectedPeer.Coordinator))
        {
            var viaCertificate = new Membership.MembershipClient(bootstrap).Register(Registration("https://127.0.0.1:2"));
            var viaToken = new Membership.MembershipClient(anonymous).Register(Registration("https://127.0.0.1:3", "correct-horse-battery-staple"));
            foreach (var reply in new[] { viaCertificate, viaToken })
            {
                using var issued = X509Certificate2.CreateFromPem(reply.Certificate);
                var identity = pki.Tls(null).Identify(issued, asServer: true, out var error);
                Assert.True(identity is not null, error);
                Assert.Equal((ClusterRoles.Worker, reply.WorkerId), (identity.Role, identity.Name));
            }
            // Over TLS a worker must be reachable over TLS too.
            var plain = Refused(() => new Membership.MembershipClient(bootstrap).Register(Registration("http://127.0.0.1:4")));
            Assert.Equal(StatusCode.InvalidArgument, plain.StatusCode);
        }
        Assert.Equal(2, cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Count);
    }

    [Fact]
    public async Task Heartbeat_and_leave_for_another_worker_are_refused_even_with_its_token()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(2, pki: pki);
        var records = cluster.CoordinatorService<WorkerRegistry>().Snapshot();
        var victim = records.Single(w => w.Name == "test-2");
        var other = Enumerable.Range(0, 2).Select(cluster.WorkerService<WorkerSecurity>).Select(s => s.Tls!.Certificate!)
            .Single(c => ClusterCertificates.NameAndRole(c).Name != victim.Id);
        Assert.NotEqual("", victim.Certificate);

        // The other worker (a legitimate member, with its own issued certificate) and the bootstrap certificate both
        // know the victim's id and even its registration token; neither may speak for it.
        foreach (var impostor in new[] { other, pki.TlsOf(pki.WorkerDir).Certificate! })
        {
            using var channel = pki.Channel(cluster.Address, impostor, ExpectedPeer.Coordinator);
            var membership = new Membership.MembershipClient(channel);
            var leave = Refused(() => membership.Leave(new LeaveRequest { WorkerId = victim.Id, Token = victim.Token, Reason = "evil" }));
            Assert.Equal(StatusCode.PermissionDenied, leave.StatusCode);
            Assert.Contains($"not the certificate issued to {victim.Id}", leave.Status.Detail);
            var beat = Refused(() => membership.Heartbeat(new HeartbeatRequest { WorkerId = victim.Id, Token = victim.Token }));
            Assert.Equal(StatusCode.PermissionDenied, beat.StatusCode);
        }
        // Without a certificate: not even admitted to the membership service.
        using (var anonymous = pki.Channel(cluster.Address, null, ExpectedPeer.Coordinator))
        {
            var e = Refused(() => new Membership.MembershipClient(anonymous).Leave(new LeaveRequest { WorkerId = victim.Id, Token = victim.Token }));
            Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        }
        var after = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single(w => w.WorkerId == victim.Id);
        Assert.Equal(Protos.Jobs.WorkerState.Idle, after.State);
        Assert.Equal(2, cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Count);
    }

    [Fact]
    public async Task Only_the_coordinator_may_drive_a_worker()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(2, pki: pki);
        var workers = cluster.CoordinatorService<WorkerRegistry>().Snapshot();
        var target = workers[0];
        var pinned = ExpectedPeer.Worker(target.Id, target.Certificate);
        var otherWorker = Enumerable.Range(0, 2).Select(cluster.WorkerService<WorkerSecurity>).Select(s => s.Tls!.Certificate!)
            .Single(c => ClusterCertificates.NameAndRole(c).Name != target.Id);

        // The coordinator's certificate may: assign a one-worker job.
        using var coordinatorChannel = pki.Channel(target.Address, pki.TlsOf(pki.CoordinatorDir).Certificate, pinned);
        var coordinator = new WorkerControl.WorkerControlClient(coordinatorChannel);
        Assert.True(coordinator.Assign(Assignment(target.Address, target.Id)).Parameters > 0);

        var callers = new (string Who, X509Certificate2? Certificate, StatusCode Code)[]
        {
            ("no certificate", null, StatusCode.Unauthenticated),
            ("a client certificate", pki.Issue("mallory", ClusterRoles.Client), StatusCode.PermissionDenied),
            ("the bootstrap worker certificate", pki.TlsOf(pki.WorkerDir).Certificate, StatusCode.PermissionDenied),
            ("another worker's issued certificate", otherWorker, StatusCode.PermissionDenied),
        };
        foreach (var (who, certificate, code) in callers)
        {
            using var channel = pki.Channel(target.Address, certificate, pinned);
            var client = new WorkerControl.WorkerControlClient(channel);
            var assign = Refused(() => client.Assign(Assignment(target.Address, target.Id)));
            Assert.True(assign.StatusCode == code, $"{who}: Assign got {assign.StatusCode}: {assign.Status.Detail}");
            Assert.Contains("WorkerControl/Assign", assign.Status.Detail);
            using (var state = client.GetState(new GetStateRequest { JobId = "j" }))
            {
                var e = await Assert.ThrowsAsync<RpcException>(async () => await state.ResponseStream.MoveNext(CancellationToken.None));
                Assert.True(e.StatusCode == code, $"{who}: GetState got {e.StatusCode}: {e.Status.Detail}");
            }
            var release = Refused(() => client.Release(new ReleaseRequest { JobId = "j", Reason = "evil" }));
            Assert.True(release.StatusCode == code, $"{who}: Release got {release.StatusCode}");
        }

        // The job is still assigned and its state goes only to the coordinator.
        using (var state = coordinator.GetState(new GetStateRequest { JobId = "j" }))
        {
            Assert.True(await state.ResponseStream.MoveNext(CancellationToken.None));
            Assert.True(state.ResponseStream.Current.TotalBytes > 0);
        }
        coordinator.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
    }

    [Fact]
    public async Task The_coordinator_dials_only_the_certificate_a_worker_was_issued()
    {
        using var pki = new TestPki();
        await using var cluster = await InProcessCluster.StartAsync(1, pki: pki);
        var target = cluster.CoordinatorService<WorkerRegistry>().Snapshot().Single();
        // Someone else's certificate pinned for this address (e.g. a different process answering there): refused before any call.
        using var impostor = pki.Issue(target.Id, ClusterRoles.Worker);
        using var channel = pki.Channel(target.Address, pki.TlsOf(pki.CoordinatorDir).Certificate, ExpectedPeer.Worker(target.Id, ClusterCertificates.Sha256(impostor)));
        var e = Refused(() => new WorkerControl.WorkerControlClient(channel).Release(new ReleaseRequest { JobId = "j" }));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("is not the one expected", e.Status.Detail);
    }

    [Fact]
    public async Task A_worker_joins_with_only_the_ca_and_a_join_token_and_gets_its_own_certificate()
    {
        using var pki = new TestPki();
        using var tmp = new TempDir();
        var tokenFile = tmp.Write("join-token", "# issued for the test\nsome-long-join-token-0123456789\n");
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { JoinTokenFile = tokenFile }, pki: pki);
        await cluster.AddWorkerAsync(new WorkerOptions { Tls = new TlsSettings { Ca = pki.CaPath }, JoinTokenFile = tokenFile });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        var record = cluster.CoordinatorService<WorkerRegistry>().Snapshot().Single();
        var own = cluster.WorkerService<WorkerSecurity>(0).Tls!.Certificate!;
        Assert.Equal(record.Certificate, ClusterCertificates.Sha256(own));
        Assert.Equal(record.Id, ClusterCertificates.NameAndRole(own).Name);
        Assert.StartsWith("https://", record.Address, StringComparison.Ordinal);
    }

    /// <summary>A valid assignment of a one-worker char LM job "j".</summary>
    static AssignRequest Assignment(string address, string id)
    {
        var request = new AssignRequest { JobId = "j", Generation = 1, WorldSize = 1, SpecJson = JobSpecSerializer.Serialize(TestJobs.CharLm("unused.txt")), TokenizerKind = "char" };
        request.Peers.Add(new Peer { Rank = 0, Address = address, WorkerId = id });
        request.TokenizerTokens.AddRange(["<pad>", "<unk>", "a", "b", "c"]);
        return request;
    }
}
