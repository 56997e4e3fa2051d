using Grpc.Core;

namespace Dtrain.Rpc;

/// <summary>
/// Who is at the other end of a TLS connection, from its certificate (checked against the cluster CA): its role
/// (<see cref="ClusterRoles"/>), its name (a worker's id, for the certificates the coordinator issues) and the
/// certificate's SHA-256. Never from a header or a message field.
/// </summary>
public sealed record PeerIdentity(string Role, string Name, string Sha256)
{
    /// <summary>Where <see cref="AccessInterceptor"/> leaves the caller's identity in <see cref="ServerCallContext.UserState"/>.</summary>
    internal const string ContextKey = "dtrain-peer";

    /// <summary>The caller of this call, or null on a plaintext server (and for an anonymous call without a valid certificate).</summary>
    public static PeerIdentity? Of(ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        return context.UserState.TryGetValue(ContextKey, out var value) ? value as PeerIdentity : null;
    }

    public override string ToString() => $"{Role} \"{Name}\" (certificate sha256 {Short(Sha256)})";

    internal static string Short(string sha256) => sha256.Length > 16 ? sha256[..16] + "…" : sha256;
}

/// <summary>
/// Whom a connection must reach or come from: a role, and optionally one certificate (a worker's, pinned by the
/// coordinator) or one name; <see cref="CheckHostName"/> also requires the server certificate to name the host dialled.
/// </summary>
public sealed record ExpectedPeer(string? Role, string? Name, string? Sha256, bool CheckHostName)
{
    /// <summary>The cluster's coordinator, at the host name its certificate names (what workers and the CLI dial).</summary>
    public static ExpectedPeer Coordinator { get; } = new(ClusterRoles.Coordinator, null, null, true);

    /// <summary>Any party with a certificate from the cluster CA for the host dialled (`dtrain health` of a coordinator or worker).</summary>
    public static ExpectedPeer AnyMember { get; } = new(null, null, null, true);

    /// <summary>Worker <paramref name="id"/> with exactly the certificate the coordinator issued to it (when known).</summary>
    public static ExpectedPeer Worker(string id, string? sha256) => new(ClusterRoles.Worker, id, string.IsNullOrEmpty(sha256) ? null : sha256, false);

    /// <summary>Why <paramref name="peer"/> is not the one expected, or null when it is.</summary>
    public string? Mismatch(PeerIdentity? peer)
    {
        if (peer is null) return $"no certificate from the cluster CA was presented (expected {this})";
        if (Role is not null && peer.Role != Role) return $"{peer} is not {this}";
        if (Sha256 is not null && !string.Equals(peer.Sha256, Sha256, StringComparison.OrdinalIgnoreCase)) return $"{peer} is not {this}";
        if (Name is not null && peer.Name != Name) return $"{peer} is not {this}";
        return null;
    }

    public override string ToString()
    {
        var who = Role ?? "a cluster member";
        if (Name is not null) who += $" \"{Name}\"";
        if (Sha256 is not null) who += $" with certificate sha256 {PeerIdentity.Short(Sha256)}";
        return who;
    }
}
