using Dtrain.Protos.Jobs;
using Dtrain.Protos.Membership;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Net.Client;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A worker of another build speaks another wire protocol (it would misread what it does not know, e.g. evaluate the
/// wrong rows of a validation part): a real coordinator refuses its registration naming both versions, and no worker
/// appears; real workers of this build register as before.
/// </summary>
public class WireProtocolTests
{
    [Fact]
    public async Task A_worker_of_another_wire_protocol_is_refused_naming_both_and_this_builds_workers_register()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        using var channel = GrpcChannel.ForAddress(cluster.Address);
        var membership = new Membership.MembershipClient(channel);
        foreach (var (protocol, version) in new[] { (0, ""), (0, "0.9.0"), (WireProtocol.Version + 1, "9.9.9") })
        {
            var request = new RegisterRequest { Address = $"http://127.0.0.1:{9 + protocol}", Capabilities = new WorkerCapabilities { Cores = 1, Protocol = protocol, Version = version } };
            var e = Assert.Throws<RpcException>(() => membership.Register(request));
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Contains($"worker http://127.0.0.1:{9 + protocol} speaks dtrain wire protocol {protocol}", e.Status.Detail);
            Assert.Contains($"this coordinator speaks {WireProtocol.Version}", e.Status.Detail);
            Assert.Contains("run the same dtrain build on the coordinator and every worker", e.Status.Detail);
            if (protocol == 0) Assert.Contains("before protocols were numbered", e.Status.Detail);
            if (version.Length > 0) Assert.Contains($"build {version}", e.Status.Detail);
        }
        // Only the cluster's own (real) worker is a member.
        Assert.Single(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers);
        var ok = membership.Register(new RegisterRequest { Address = "http://127.0.0.1:19", Capabilities = new WorkerCapabilities { Cores = 1, Protocol = WireProtocol.Version } });
        Assert.StartsWith("w", ok.WorkerId);
        Assert.Equal(2, cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Count);
    }
}
