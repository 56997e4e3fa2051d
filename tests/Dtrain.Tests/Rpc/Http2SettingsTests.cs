using Dtrain.Collective;
using Dtrain.Rpc;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Dtrain.Tests.Rpc;

/// <summary>One set of HTTP/2 settings for every server and channel (<see cref="Http2Settings"/>).</summary>
public class Http2SettingsTests
{
    private static KestrelServerOptions Kestrel(bool collective)
    {
        var builder = GrpcServerHost.CreateBuilder("127.0.0.1", 0, 64 << 20, l => l.SetMinimumLevel(LogLevel.Warning));
        if (collective) builder.Services.AddDtrainCollective();
        using var app = builder.Build();
        return app.Services.GetRequiredService<IOptions<KestrelServerOptions>>().Value;
    }

    [Theory]
    [InlineData(false)]   // the coordinator's server
    [InlineData(true)]    // a worker's: control and collective calls on one Kestrel
    public void Every_server_gets_the_same_windows_and_keep_alive(bool collective)
    {
        var http2 = Kestrel(collective).Limits.Http2;
        var expected = Http2Settings.Default;
        Assert.Equal(expected.StreamWindowBytes, http2.InitialStreamWindowSize);
        Assert.Equal(expected.ConnectionWindowBytes, http2.InitialConnectionWindowSize);
        Assert.Equal(expected.KeepAlivePingDelay, http2.KeepAlivePingDelay);
        Assert.Equal(expected.KeepAlivePingTimeout, http2.KeepAlivePingTimeout);
        Assert.Equal(16 * 1024 * 1024, expected.StreamWindowBytes);
        Assert.Equal(32 * 1024 * 1024, expected.ConnectionWindowBytes);
    }

    [Fact]
    public void A_channel_handler_gets_them_too()
    {
        using var handler = new SocketsHttpHandler();
        var settings = Http2Settings.Default with { ConnectTimeout = TimeSpan.FromSeconds(3) };
        settings.ApplyTo(handler);
        Assert.Equal(16 * 1024 * 1024, handler.InitialHttp2StreamWindowSize);
        Assert.Equal(TimeSpan.FromSeconds(10), handler.KeepAlivePingDelay);
        Assert.Equal(TimeSpan.FromSeconds(20), handler.KeepAlivePingTimeout);
        Assert.Equal(HttpKeepAlivePingPolicy.Always, handler.KeepAlivePingPolicy);
        Assert.Equal(TimeSpan.FromSeconds(3), handler.ConnectTimeout);
        Assert.True(handler.EnableMultipleHttp2Connections);
    }

    [Fact]
    public void Bad_settings_are_refused_naming_the_value()
    {
        var errors = (Http2Settings.Default with { StreamWindowBytes = 100, KeepAlivePingTimeout = TimeSpan.Zero }).Validate();
        Assert.Equal(["HTTP/2 StreamWindowBytes 100 must be at least 65535", "HTTP/2 KeepAlivePingTimeout 0 s must be > 0 and at most 86400 s"], errors);
        Assert.Throws<ArgumentException>(() => (Http2Settings.Default with { ConnectTimeout = TimeSpan.FromDays(2) }).ApplyTo(new SocketsHttpHandler()));
        Assert.Empty(Http2Settings.Default.Validate());
    }
}
