using System.Globalization;

namespace Dtrain.Collective;

/// <summary>
/// The waits of the data plane that are not a job's (a job's are the collective operation and ring connect timeouts):
/// how long a new TCP link may take to authenticate, when a silent shared-memory peer counts as dead, and how long
/// closing a link or stream waits for the other side. A worker sets them from its options
/// (<c>Worker:DataHandshakeTimeoutSeconds</c>, <c>Worker:PeerSilentAfterSeconds</c>, <c>Worker:LinkCloseGraceSeconds</c>).
/// </summary>
public sealed record CollectiveTimeouts
{
    /// <summary>The defaults.</summary>
    public static CollectiveTimeouts Default { get; } = new();

    /// <summary>An inbound data-plane TCP connection must finish TLS, its claim and the answer within this, or it is dropped.</summary>
    public TimeSpan Handshake { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>A shared-memory peer (ring side or group rank) whose heartbeat has not moved for this long is taken for dead.</summary>
    public TimeSpan PeerSilentAfter { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Closing a link when a job ends: how long a ring's gRPC stream waits for the neighbour to acknowledge, a TCP or
    /// shared-memory writer for its last frame, and receives go on after the receiver closed cleanly.
    /// </summary>
    public TimeSpan CloseGrace { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Closing a pipeline stage's gRPC stream: how long it waits for the next stage to acknowledge.</summary>
    public TimeSpan StageStreamCloseGrace { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>What is wrong, naming the value; empty when all are usable.</summary>
    public IReadOnlyList<string> Validate()
    {
        var e = new List<string>();
        Check(e, nameof(Handshake), Handshake);
        Check(e, nameof(PeerSilentAfter), PeerSilentAfter);
        Check(e, nameof(CloseGrace), CloseGrace);
        Check(e, nameof(StageStreamCloseGrace), StageStreamCloseGrace);
        return e;
    }

    /// <summary>These timeouts, or an <see cref="ArgumentException"/> naming what is wrong.</summary>
    public CollectiveTimeouts Validated() =>
        Validate() is { Count: > 0 } errors ? throw new ArgumentException("collective timeouts: " + string.Join("; ", errors)) : this;

    private static void Check(List<string> errors, string name, TimeSpan value)
    {
        if (value <= TimeSpan.Zero || value > TimeSpan.FromDays(1))
            errors.Add(string.Create(CultureInfo.InvariantCulture, $"{name} {value.TotalSeconds} s must be > 0 and at most 86400 s"));
    }
}
