using Grpc.Core;

namespace Dtrain.Server;

/// <summary>
/// Who is calling, as a key for per-client quotas and rate limits (pending uploads, submissions, registrations).
/// Today the client's IP address (<see cref="PeerAddressIdentity"/>); once callers authenticate, register an
/// implementation that returns the user's id and every quota follows the user instead.
/// </summary>
public interface ICallerIdentity
{
    string Of(ServerCallContext context);
}

/// <summary>The caller's IP address (IPv4-mapped IPv6 addresses as IPv4; the port is left out: it changes per connection).</summary>
public sealed class PeerAddressIdentity : ICallerIdentity
{
    public string Of(ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var ip = context.GetHttpContext().Connection.RemoteIpAddress;
        if (ip is null) return context.Peer;
        return (ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip).ToString();
    }
}
