using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Dtrain.Collective;
using Dtrain.Worker;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Collective;

/// <summary>The data plane's waits that were literals (handshake 15 s, peer silence 10 s, close graces 5 s and 10 s) are named, validated options.</summary>
public class CollectiveTimeoutsTests
{
    [Fact]
    public void Worker_options_give_the_data_plane_its_timeouts_and_bad_ones_are_refused_naming_the_key()
    {
        var defaults = new WorkerOptions().CollectiveTimeouts;
        Assert.Equal(CollectiveTimeouts.Default, defaults);
        Assert.Equal((TimeSpan.FromSeconds(15), TimeSpan.FromSeconds(10), TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(10)),
            (defaults.Handshake, defaults.PeerSilentAfter, defaults.CloseGrace, defaults.StageStreamCloseGrace));
        var set = new WorkerOptions { DataHandshakeTimeoutSeconds = 2, PeerSilentAfterSeconds = 0.5, LinkCloseGraceSeconds = 1 }.CollectiveTimeouts;
        Assert.Equal((TimeSpan.FromSeconds(2), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(1)), (set.Handshake, set.PeerSilentAfter, set.CloseGrace));

        var errors = new WorkerOptions { DataHandshakeTimeoutSeconds = 0, PeerSilentAfterSeconds = double.NaN, LinkCloseGraceSeconds = 1e6 }.Validate();
        Assert.Equal(
            [
                "Worker:DataHandshakeTimeoutSeconds 0 must be a number of seconds > 0 and at most 86400",
                "Worker:PeerSilentAfterSeconds NaN must be a number of seconds > 0 and at most 86400",
                "Worker:LinkCloseGraceSeconds 1000000 must be a number of seconds > 0 and at most 86400",
            ], errors);
        Assert.Equal(["CloseGrace 0 s must be > 0 and at most 86400 s"], (CollectiveTimeouts.Default with { CloseGrace = TimeSpan.Zero }).Validate());
        var refused = Assert.Throws<ArgumentException>(() => new DataPlane(new RingMailboxes(), new DataPlaneOptions { Timeouts = CollectiveTimeouts.Default with { Handshake = TimeSpan.FromDays(2) } }));
        Assert.Contains("Handshake 172800 s must be > 0 and at most 86400 s", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_data_plane_connection_that_never_says_who_it_is_is_dropped_after_the_handshake_timeout()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(new DataPlaneOptions { Timeouts = CollectiveTimeouts.Default with { Handshake = TimeSpan.FromSeconds(1) } });
        builder.AddDtrainCollective(new IPEndPoint(IPAddress.Loopback, 0));
        await using var app = builder.Build();
        app.MapDtrainCollective();
        await app.StartAsync();
        var plane = app.Services.GetRequiredService<DataPlane>();

        using var client = new TcpClient();
        await client.ConnectAsync(IPAddress.Loopback, plane.TcpPort);
        var clock = Stopwatch.StartNew();
        var stream = client.GetStream();
        var buffer = new byte[16];
        int read;
        try
        {
            // Sends nothing: the server gives up after 1 s (the default is 15 s, far beyond this bound).
            read = await stream.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(12));
        }
        catch (IOException)
        {
            read = 0;   // reset instead of closed: dropped all the same
        }
        Assert.Equal(0, read);
        Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(0.9), $"dropped after {clock.Elapsed.TotalSeconds:0.00} s, before the 1 s handshake timeout");
    }
}
