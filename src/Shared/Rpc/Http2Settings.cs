using System.Globalization;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace Dtrain.Rpc;

/// <summary>
/// The HTTP/2 connection settings of every gRPC server and channel of dtrain — the coordinator's and a worker's Kestrel
/// (one Kestrel per worker, serving control and collective calls), the collective endpoint hosted alone, the channels a
/// worker opens to its neighbours and the coordinator, the coordinator's channels to workers and the CLI's: flow-control
/// windows, keep-alive pings and the connect timeout. Message size limits stay per endpoint (the process's
/// <c>MaxMessageBytes</c> option; a ring piece's own bound on the collective stream).
/// </summary>
public sealed record Http2Settings
{
    /// <summary>The settings every server and channel uses unless an option overrides one (Coordinator:KeepAlivePingSeconds, Coordinator:WorkerConnectTimeoutSeconds).</summary>
    public static Http2Settings Default { get; } = new();

    /// <summary>Initial receive window of one stream, both ends: large, so a 1 MiB ring piece or a stage tensor never waits for a window update.</summary>
    public int StreamWindowBytes { get; init; } = 16 * 1024 * 1024;

    /// <summary>Initial receive window of a whole connection (a server's; a client's grows by itself).</summary>
    public int ConnectionWindowBytes { get; init; } = 32 * 1024 * 1024;

    /// <summary>A connection that has been quiet this long is pinged, so a peer behind a dead link is found without waiting for a call's deadline.</summary>
    public TimeSpan KeepAlivePingDelay { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>A ping not answered within this is a dead connection: its calls fail.</summary>
    public TimeSpan KeepAlivePingTimeout { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>How long a channel tries to open a TCP connection before the call fails as unreachable.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>What is wrong with these settings, named; empty when they are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var e = new List<string>();
        // Kestrel's and SocketsHttpHandler's own bounds: at least the HTTP/2 default window, below 2 GiB.
        if (StreamWindowBytes < 65_535) e.Add(string.Create(CultureInfo.InvariantCulture, $"HTTP/2 StreamWindowBytes {StreamWindowBytes} must be at least 65535"));
        if (ConnectionWindowBytes < 65_535) e.Add(string.Create(CultureInfo.InvariantCulture, $"HTTP/2 ConnectionWindowBytes {ConnectionWindowBytes} must be at least 65535"));
        Positive(e, nameof(KeepAlivePingDelay), KeepAlivePingDelay);
        Positive(e, nameof(KeepAlivePingTimeout), KeepAlivePingTimeout);
        Positive(e, nameof(ConnectTimeout), ConnectTimeout);
        return e;
    }

    private static void Positive(List<string> errors, string name, TimeSpan value)
    {
        if (value <= TimeSpan.Zero || value > TimeSpan.FromDays(1))
            errors.Add(string.Create(CultureInfo.InvariantCulture, $"HTTP/2 {name} {value.TotalSeconds} s must be > 0 and at most 86400 s"));
    }

    private void ThrowIfInvalid()
    {
        if (Validate() is { Count: > 0 } errors) throw new ArgumentException(string.Join("; ", errors));
    }

    /// <summary>Windows and keep-alive of a Kestrel server.</summary>
    public void ApplyTo(KestrelServerOptions kestrel)
    {
        ArgumentNullException.ThrowIfNull(kestrel);
        ThrowIfInvalid();
        kestrel.Limits.Http2.InitialStreamWindowSize = StreamWindowBytes;
        kestrel.Limits.Http2.InitialConnectionWindowSize = ConnectionWindowBytes;
        kestrel.Limits.Http2.KeepAlivePingDelay = KeepAlivePingDelay;
        kestrel.Limits.Http2.KeepAlivePingTimeout = KeepAlivePingTimeout;
    }

    /// <summary>Window, keep-alive (also while no call is active), connect timeout and connection reuse of a channel's handler.</summary>
    public void ApplyTo(SocketsHttpHandler handler)
    {
        ArgumentNullException.ThrowIfNull(handler);
        ThrowIfInvalid();
        handler.EnableMultipleHttp2Connections = true;
        handler.InitialHttp2StreamWindowSize = StreamWindowBytes;
        handler.KeepAlivePingDelay = KeepAlivePingDelay;
        handler.KeepAlivePingTimeout = KeepAlivePingTimeout;
        handler.KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always;
        // Long-lived channels (a ring's stream, the coordinator's to its workers) keep their connection; pings find dead ones.
        handler.PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan;
        handler.ConnectTimeout = ConnectTimeout;
    }
}
