using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Dtrain.Rpc;

/// <summary>
/// The TLS material of one process, loaded: the cluster CA bundle everything is checked against, this process's own
/// certificate (with its key; presented as server and as client certificate), and on the coordinator the CA's key,
/// with which it signs each worker's certificate at registration.
/// </summary>
public sealed class ClusterTls
{
    const string ServerAuth = "1.3.6.1.5.5.7.3.1";
    const string ClientAuth = "1.3.6.1.5.5.7.3.2";
    static readonly TimeSpan CacheFor = TimeSpan.FromMinutes(1);

    private readonly ConcurrentDictionary<(string Sha256, bool Server), (PeerIdentity? Identity, string? Error, DateTimeOffset Until)> checkedCertificates = new();
    private X509Certificate2? certificate;

    /// <param name="time">The clock certificates are checked against (their validity, the cache of checked ones); the system's by default.</param>
    public ClusterTls(X509Certificate2Collection authorities, string authorityPath, X509Certificate2? certificate = null, X509Certificate2? signer = null,
        TimeProvider? time = null)
    {
        Time = time ?? TimeProvider.System;
        ArgumentNullException.ThrowIfNull(authorities);
        if (authorities.Count == 0) throw new ArgumentException("a cluster needs at least one CA certificate", nameof(authorities));
        Authorities = authorities;
        AuthorityPath = authorityPath;
        this.certificate = certificate;
        Signer = signer;
    }

    /// <summary>The clock certificates are checked against.</summary>
    public TimeProvider Time { get; }

    /// <summary>The CA certificates trusted (a bundle: during a CA rotation, the old and the new one).</summary>
    public X509Certificate2Collection Authorities { get; }

    /// <summary>The file the CA bundle came from.</summary>
    public string AuthorityPath { get; }

    /// <summary>This process's certificate with its key, or null (a worker joining with a token, until the coordinator issued it one).</summary>
    public X509Certificate2? Certificate
    {
        get => Volatile.Read(ref certificate);
        set => Volatile.Write(ref certificate, value);
    }

    /// <summary>Served while <see cref="Certificate"/> is null: a self-signed stand-in of a worker joining with a token.</summary>
    public X509Certificate2? ServerFallback { get; set; }

    /// <summary>The certificate the server presents to new connections.</summary>
    public X509Certificate2? ServerCertificate => Certificate ?? ServerFallback;

    /// <summary>The CA certificate with its private key (the coordinator's), or null.</summary>
    public X509Certificate2? Signer { get; }

    /// <summary>
    /// The identity a certificate proves: it must chain to one of <see cref="Authorities"/> (now valid, for server or
    /// client authentication) and carry a cluster role (OU) and a name (CN). Null, with the reason, otherwise.
    /// </summary>
    public PeerIdentity? Identify(X509Certificate2 presented, bool asServer, out string? error)
    {
        ArgumentNullException.ThrowIfNull(presented);
        var sha = ClusterCertificates.Sha256(presented);
        var now = Time.GetUtcNow();
        if (checkedCertificates.TryGetValue((sha, asServer), out var cached) && cached.Until > now)
        {
            error = cached.Error;
            return cached.Identity;
        }
        var identity = Check(presented, sha, asServer, out error);
        var until = now + CacheFor;
        if (new DateTimeOffset(presented.NotAfter.ToUniversalTime()) < until) until = new DateTimeOffset(presented.NotAfter.ToUniversalTime());
        if (checkedCertificates.Count > 10_000) checkedCertificates.Clear();
        checkedCertificates[(sha, asServer)] = (identity, error, until);
        return identity;
    }

    private PeerIdentity? Check(X509Certificate2 presented, string sha, bool asServer, out string? error)
    {
        using var chain = new X509Chain();
        var policy = chain.ChainPolicy;
        policy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        policy.CustomTrustStore.AddRange(Authorities);
        policy.RevocationMode = X509RevocationMode.NoCheck;
        policy.DisableCertificateDownloads = true;
        policy.VerificationTime = Time.GetUtcNow().LocalDateTime;
        policy.ApplicationPolicy.Add(new Oid(asServer ? ServerAuth : ClientAuth));
        var subject = presented.Subject;
        if (!chain.Build(presented))
        {
            var reasons = chain.ChainStatus.Select(s => s.StatusInformation.Trim().TrimEnd('.')).Where(s => s.Length > 0).Distinct().ToList();
            error = $"certificate \"{subject}\" is not valid for this cluster ({string.Join("; ", reasons)}): it must be signed by the cluster CA ({AuthorityPath}), unexpired, " +
                    $"and made for {(asServer ? "server" : "client")} authentication";
            return null;
        }
        var (name, role) = ClusterCertificates.NameAndRole(presented);
        if (role is null || !ClusterRoles.All.Contains(role) || string.IsNullOrEmpty(name))
        {
            error = $"certificate \"{subject}\" has no cluster role: its subject must be OU=coordinator, worker or client and a CN (made by `dtrain certs`)";
            return null;
        }
        error = null;
        return new PeerIdentity(role, name, sha);
    }

    /// <summary>A self-signed certificate for a worker's server while it has none from the CA (it joins with a token).</summary>
    public static X509Certificate2 SelfSignedStandIn(string name, TimeProvider? time = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(ClusterCertificates.Subject(name, ClusterRoles.Worker), key, HashAlgorithmName.SHA256);
        var now = (time ?? TimeProvider.System).GetUtcNow();
        return request.CreateSelfSigned(now.AddMinutes(-5), now.AddDays(1));
    }
}
