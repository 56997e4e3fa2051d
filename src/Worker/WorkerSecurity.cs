using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Dtrain.Rpc;

namespace Dtrain.Worker;

/// <summary>
/// A worker's TLS and its proof for joining. TLS is on whenever TLS files are configured (the coordinator URL is then
/// https), and required when the worker listens beyond loopback (plaintext then only with --insecure). The worker
/// proves it may join with a worker certificate from the cluster CA (a bootstrap certificate, e.g. DIR/worker of
/// `dtrain certs init`) or a join token; at registration it sends a certificate signing request for its key (one per
/// process: the coordinator lets only that key register again under the worker's name and address) and
/// installs the certificate the coordinator signs for it (CN = its worker id): from then on it serves, heartbeats and
/// dials its ring and pipeline neighbours with that certificate, and its bootstrap certificate is no longer used.
/// </summary>
public sealed class WorkerSecurity
{
    private WorkerSecurity(ClusterTls? tls, string? joinToken, string? insecureWarning)
    {
        Tls = tls;
        JoinToken = joinToken;
        InsecureWarning = insecureWarning;
    }

    /// <summary>The CA and this worker's current certificate; null = plaintext.</summary>
    public ClusterTls? Tls { get; }

    public string? JoinToken { get; }

    /// <summary>Set when listening beyond loopback without TLS (--insecure).</summary>
    public string? InsecureWarning { get; }

    /// <summary>http or https: what this worker's advertised address starts with.</summary>
    public string Scheme => Tls is null ? Uri.UriSchemeHttp : Uri.UriSchemeHttps;

    /// <summary>The server side of TLS: the current certificate, and the worker's admission rules; null = plaintext.</summary>
    public ServerSecurity? Server => Tls is null ? null : new ServerSecurity(Tls, AccessPolicy.Worker());

    /// <summary>Loads TLS and the join token; every problem is an <see cref="ArgumentException"/> naming the setting or file.</summary>
    public static WorkerSecurity Create(WorkerOptions options)
    {
        var settings = options.Tls ?? new TlsSettings();
        if (settings.Insecure && settings.HasMaterial)
            throw new ArgumentException("Worker:Tls: --insecure (Insecure) and TLS files (--tls-dir, --ca, --cert, --key) exclude each other");
        var token = LoadJoinToken(options);
        var https = Uri.TryCreate(options.Coordinator, UriKind.Absolute, out var coordinator) && coordinator.Scheme == Uri.UriSchemeHttps;
        if (settings.HasMaterial)
        {
            if (!https)
                throw new ArgumentException($"Worker:Coordinator \"{options.Coordinator}\" is not https: with TLS files given, the coordinator is reached over TLS (https://HOST:PORT)");
            var tls = settings.Load("Worker:Tls", CertificateNeed.Optional);
            if (tls.Certificate is { } own)
            {
                var identity = tls.Identify(own, asServer: false, out var error) ?? throw new ArgumentException($"Worker:Tls: {settings.CertPath}: {error}");
                if (identity.Role != ClusterRoles.Worker)
                    throw new ArgumentException($"Worker:Tls: {settings.CertPath} is a {identity.Role} certificate (\"{own.Subject}\"); a worker joins with a worker certificate (DIR/worker of `dtrain certs init`) or a join token");
                if (tls.Identify(own, asServer: true, out error) is null) throw new ArgumentException($"Worker:Tls: {settings.CertPath} cannot serve: {error}");
            }
            else if (token is null)
            {
                throw new ArgumentException($"Worker:Tls: a worker must prove it may join: a worker certificate ({TlsSettings.CertFile} and {TlsSettings.KeyFile} in --tls-dir, or --cert and --key) " +
                                            $"or a join token (--join-token-file FILE); {settings.CertPath ?? "no certificate"} was not found");
            }
            else
            {
                // Joining with a token: until the coordinator issues a certificate, the server presents a self-signed stand-in.
                tls.ServerFallback = ClusterTls.SelfSignedStandIn("joining");
            }
            return new WorkerSecurity(tls, token, null);
        }
        if (https)
            throw new ArgumentException($"Worker:Coordinator \"{options.Coordinator}\" is https: give the cluster CA and proof for joining: --tls-dir DIR/worker (from `dtrain certs init`), " +
                                        "or --ca CA_FILE with --join-token-file FILE");
        // A join token is proof for a TLS coordinator; over plain http:// beyond loopback anyone on the path could read it
        // (it travels in the registration) and join the cluster with it, as the CLI refuses to send its token there.
        if (token is not null && coordinator is not null && !TlsSettings.IsLoopback(coordinator.Host))
            throw new ArgumentException($"refusing to send the join token unencrypted to {options.Coordinator} (http:// beyond loopback: anyone on the network path could read it and join " +
                                        "the cluster with it); use the coordinator's https:// address with --ca CA_FILE, or leave out --join-token-file (Worker:JoinToken) for a plaintext coordinator");
        if (TlsSettings.IsLoopback(options.Listen)) return new WorkerSecurity(null, token, null);
        if (!settings.Insecure)
            throw new ArgumentException($"Worker:Listen {options.Listen} reaches beyond this machine, so TLS is required: pass --tls-dir DIR/worker (from `dtrain certs init`; " +
                                        "Worker:Tls:Dir) with an https --coordinator, or accept plaintext without any authentication with --insecure (Worker:Tls:Insecure)");
        return new WorkerSecurity(null, token,
            $"this worker listens on {options.Listen} without TLS or authentication (--insecure): anyone who reaches it can assign it jobs and read its model");
    }

    private static string? LoadJoinToken(WorkerOptions options)
    {
        if (!string.IsNullOrWhiteSpace(options.JoinToken)) return options.JoinToken.Trim();
        if (string.IsNullOrWhiteSpace(options.JoinTokenFile)) return null;
        var file = options.JoinTokenFile.Trim();
        if (!File.Exists(file)) throw new ArgumentException($"Worker:JoinTokenFile: {file} not found");
        return File.ReadLines(file).Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0 && !l.StartsWith('#'))
            ?? throw new ArgumentException($"Worker:JoinTokenFile: {file} holds no token");
    }

    /// <summary>A fresh key and a PKCS#10 request for it (DER), to send with Register.</summary>
    public static (ECDsa Key, byte[] Request) NewSigningRequest(string name)
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        return (key, SigningRequest(key, name));
    }

    /// <summary>A PKCS#10 request (DER) for <paramref name="key"/>: signed with it, so it proves this worker holds the key.</summary>
    public static byte[] SigningRequest(ECDsa key, string name) =>
        new CertificateRequest(ClusterCertificates.Subject(name, ClusterRoles.Worker), key, HashAlgorithmName.SHA256).CreateSigningRequest();

    /// <summary>
    /// Installs the certificate the coordinator issued (PEM) for <paramref name="key"/>: it must chain to the cluster
    /// CA as a worker certificate. New connections (both directions) use it from now on; returns its identity.
    /// </summary>
    public PeerIdentity Install(string pem, ECDsa key)
    {
        var tls = Tls ?? throw new InvalidOperationException("a plaintext worker installs no certificate");
        if (string.IsNullOrWhiteSpace(pem)) throw new InvalidDataException("the coordinator issued no certificate (does it run with TLS?)");
        X509Certificate2 issued;
        try
        {
            using var plain = X509Certificate2.CreateFromPem(pem);
            issued = plain.CopyWithPrivateKey(key);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new InvalidDataException($"the certificate the coordinator issued cannot be used: {e.Message}");
        }
        var identity = tls.Identify(issued, asServer: true, out var error);
        if (identity is not { Role: ClusterRoles.Worker }) throw new InvalidDataException($"the certificate the coordinator issued is not a worker certificate of this cluster: {error ?? identity?.ToString()}");
        tls.Certificate = issued;
        return identity;
    }
}
