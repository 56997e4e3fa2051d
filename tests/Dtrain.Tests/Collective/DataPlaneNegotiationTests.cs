using Dtrain.Collective;
using Grpc.Core;
using Microsoft.Extensions.Time.Testing;

namespace Dtrain.Tests.Collective;

/// <summary>
/// The data plane's negotiation without gRPC: its retry logic works on <see cref="DataPlaneRefusal"/> and its own
/// <see cref="TimeProvider"/>; <see cref="GrpcDataPlane"/> maps refusals to statuses and trailers and back.
/// </summary>
public class DataPlaneNegotiationTests
{
    private sealed class RefusingPeer(FakeTimeProvider time) : IDataPlanePeer
    {
        public int Attempts;

        public Task<DataPlaneLinkOffer> HelloAsync(string jobId, long generation, int sender, int worldSize, DateTimeOffset deadline, CancellationToken cancellationToken)
        {
            Assert.True(time.GetUtcNow() <= deadline);
            Interlocked.Increment(ref Attempts);
            throw new DataPlaneRefusal(DataPlaneRefusalKind.NotRegistered, $"no ring {jobId}/{generation} is registered on this worker (yet)");
        }

        public Task AttachSharedMemoryAsync(string jobId, long generation, int sender, string path, DateTimeOffset deadline, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("not reached");

        public void Dispose()
        {
        }
    }

    [Fact]
    public async Task A_neighbour_that_has_not_joined_is_retried_on_the_data_planes_clock_until_the_connect_timeout()
    {
        var time = new FakeTimeProvider(DateTimeOffset.UnixEpoch);
        var peer = new RefusingPeer(time);
        await using var plane = new DataPlane(new RingMailboxes(), time: time) { ConnectPeer = (_, _, _) => peer };
        var joining = plane.ConnectRingAsync("job", 1, 0, 2, ["127.0.0.1:1", "127.0.0.1:2"], DataTransport.Tcp, TimeSpan.FromSeconds(10));
        // Each refusal is followed by a wait on the fake clock: move it on in 100 ms steps until the join gives up (bounded by
        // the fake clock's progress, not the wall clock: the connect timeout is 10 s of fake time).
        for (var steps = 0; !joining.IsCompleted; steps++)
        {
            Assert.True(steps < 100_000, "the join never gave up");
            time.Advance(TimeSpan.FromMilliseconds(100));
            await Task.Delay(1);
        }
        var e = await Assert.ThrowsAsync<RingTransportException>(() => joining);
        Assert.Contains($"after {peer.Attempts} attempt(s): no ring job/1 is registered on this worker (yet)", e.Message, StringComparison.Ordinal);
        Assert.InRange(peer.Attempts, 8, 30);   // 25 ms doubling to 1 s between attempts: about 10 s worth
        Assert.True(time.GetUtcNow() - DateTimeOffset.UnixEpoch >= TimeSpan.FromSeconds(9), $"gave up at {time.GetUtcNow() - DateTimeOffset.UnixEpoch} of fake time");
        Assert.Equal(DataPlaneRefusalKind.NotRegistered, Assert.IsType<DataPlaneRefusal>(e.InnerException).Kind);
    }

    [Theory]
    [InlineData(DataPlaneRefusalKind.NotRegistered, StatusCode.FailedPrecondition, "not-registered")]
    [InlineData(DataPlaneRefusalKind.Superseded, StatusCode.FailedPrecondition, "superseded")]
    [InlineData(DataPlaneRefusalKind.Closed, StatusCode.FailedPrecondition, "closed")]
    [InlineData(DataPlaneRefusalKind.Refused, StatusCode.FailedPrecondition, null)]
    [InlineData(DataPlaneRefusalKind.Forbidden, StatusCode.PermissionDenied, null)]
    public void A_refusal_travels_as_the_status_and_trailer_it_always_had_and_comes_back_as_itself(DataPlaneRefusalKind kind, StatusCode code, string? trailer)
    {
        var rpc = GrpcDataPlane.ToRpc(new DataPlaneRefusal(kind, "why"));
        Assert.Equal(code, rpc.StatusCode);
        Assert.Equal("why", rpc.Status.Detail);
        Assert.Equal(trailer, rpc.Trailers.GetValue(CollectiveService.RefusalTrailer));
        var back = GrpcDataPlane.FromRpc(rpc);
        Assert.Equal(kind, back.Kind);
        Assert.Equal($"{code}: why", back.Message);
        Assert.Equal(kind == DataPlaneRefusalKind.NotRegistered, back.Retryable);
        Assert.True(GrpcDataPlane.FromRpc(new RpcException(new Status(StatusCode.Unavailable, "down"))).Retryable);
        Assert.Equal(DataPlaneRefusalKind.NoAnswer, GrpcDataPlane.FromRpc(new RpcException(new Status(StatusCode.DeadlineExceeded, "late"))).Kind);
    }
}
