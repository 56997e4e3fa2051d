using Dtrain.Rpc;
using Dtrain.Server.Auth;
using Grpc.Core;

namespace Dtrain.Server;

/// <summary>
/// Who is calling, as a key for per-client quotas and rate limits (pending uploads, submissions, registrations):
/// <see cref="AuthenticatedCallerIdentity"/> — the authenticated identity, falling back to the address only when a
/// call has none. The key is also shown in refusals ("too many job submissions from user \"alice\"").
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

/// <summary>
/// The authenticated identity of a call, so that a limit follows who calls, not where from (one token used from many
/// addresses shares one quota): the holder of a valid bearer token (<c>user "alice"</c>: the token's name, which
/// several tokens of one user share), else the client certificate the TLS connection presented (checked against the
/// cluster CA: <c>certificate client "admin" sha256 …</c>), else the IP address (<c>address 10.0.0.7</c>; no authentication: plaintext on
/// loopback, or auth off without TLS). An invalid, revoked or malformed token is no identity (the call is refused by
/// the token check anyway); it never makes a new key.
/// </summary>
public sealed class AuthenticatedCallerIdentity(TokenAuthenticator tokens) : ICallerIdentity
{
    private readonly PeerAddressIdentity address = new();

    public string Of(ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (tokens.Identify(context.RequestHeaders.GetValue("authorization")) is { } user) return $"user \"{user.Name}\"";
        if (PeerIdentity.Of(context) is { } peer) return $"certificate {peer.Role} \"{peer.Name}\" sha256 {peer.Sha256[..Math.Min(16, peer.Sha256.Length)]}";
        return $"address {address.Of(context)}";
    }
}
