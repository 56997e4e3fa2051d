using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Rpc;
using Dtrain.Server;
using Google.Protobuf;

namespace Dtrain.Tests.Cluster;

/// <summary>The membership service's mapping: a registration and a reported activity reach the registry with every field, and come back out as the listings carry them.</summary>
public class MembershipMappingTests
{
    [Fact]
    public void A_registration_reaches_the_registry_with_every_field_and_without_capabilities_as_unknown()
    {
        var request = new Protos.Membership.RegisterRequest
        {
            Address = "https://10.0.0.5:7000", Name = "gpu-a", Cordoned = true, HttpAddress = "http://10.0.0.5:9400",
            JoinToken = "not-kept", Csr = ByteString.CopyFromUtf8("not kept either"),
            Capabilities = new Protos.Membership.WorkerCapabilities { Cores = 8, Device = "cuda:0", MemoryBytes = 1L << 34, Threads = 4, Version = "1.2.3" },
        };
        var registration = ProtoMapper.FromProto(request, "ABCD");
        Assert.Equal(new WorkerRegistration("https://10.0.0.5:7000", "gpu-a", new WorkerCapabilities(8, "cuda:0", 1L << 34, 4, "1.2.3")) { Key = "ABCD", Cordoned = true, HttpAddress = "http://10.0.0.5:9400" }, registration);

        var bare = ProtoMapper.FromProto(new Protos.Membership.RegisterRequest { Address = "http://10.0.0.6:7000" }, "");
        Assert.Same(WorkerCapabilities.Unknown, bare.Capabilities);
        Assert.Equal(("", "", false, ""), (bare.Name, bare.Key, bare.Cordoned, bare.HttpAddress));
    }

    [Fact]
    public void A_reported_activity_comes_back_as_it_was_sent_with_the_time_in_phase_as_of_the_listing()
    {
        var sent = new Protos.Membership.WorkerActivity
        {
            Phase = ActivityPhases.AllReduce, Detail = "reduce-scatter step 1/2 piece 3/8", Step = 17, InPhaseMs = 41_237, WaitingOn = "w3",
            JobId = "job-0001", SubPhase = "reduce-scatter", Piece = 3, Pieces = 8, Transport = "grpc",
        };
        var kept = ProtoMapper.FromProto(sent);
        Assert.NotNull(kept);
        Assert.Equal(TimeSpan.FromMilliseconds(41_237), kept.InPhase);
        Assert.Equal(sent, kept.ToProto());
        Assert.Null(ProtoMapper.FromProto((Protos.Membership.WorkerActivity?)null));

        // Listed two seconds after that heartbeat: the time in phase is as of the listing.
        var at = new DateTimeOffset(2026, 1, 1, 12, 0, 0, TimeSpan.Zero);
        var w = new WorkerRecord("w1", "", "http://10.0.0.5:7000", WorkerCapabilities.Unknown, at.AddMinutes(-1)) { LastHeartbeat = at.AddSeconds(-2), Activity = kept };
        var row = new WorkerView(w, at, Stalled: false).ToInfo();
        Assert.Equal(2000, row.HeartbeatAgeMs);
        Assert.Equal(43_237, row.Activity.InPhaseMs);
        Assert.Equal(sent.Phase, row.Activity.Phase);
    }
}
