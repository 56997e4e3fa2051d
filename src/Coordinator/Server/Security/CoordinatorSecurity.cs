using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Dtrain.Rpc;

namespace Dtrain.Server;

/// <summary>
/// The coordinator's TLS and admission of workers. TLS is on whenever TLS files are configured, and required when it
/// listens beyond loopback (plaintext then only with an explicit, loudly logged --insecure). A worker joins with proof:
/// a worker certificate from the cluster CA on its connection, or a join token; over TLS it sends a certificate signing
/// request and gets back its own certificate (CN = its worker id, signed with the CA key), which the registry pins:
/// its heartbeats, leave, and ring and pipeline traffic are then accepted only with that certificate.
/// </summary>
public sealed class CoordinatorSecurity
{
    /// <summary>Shortest join token accepted (a guessable token is no proof).</summary>
    public const int MinJoinTokenLength = 16;

    private readonly byte[][] joinTokens;

    private CoordinatorSecurity(ClusterTls? tls, string? insecureWarning, byte[][] joinTokens)
    {
        Tls = tls;
        InsecureWarning = insecureWarning;
        this.joinTokens = joinTokens;
    }

    /// <summary>The CA, the coordinator's certificate and the CA key; null = plaintext.</summary>
    public ClusterTls? Tls { get; }

    /// <summary>Set when listening beyond loopback without TLS (--insecure).</summary>
    public string? InsecureWarning { get; }

    public int JoinTokenCount => joinTokens.Length;

    /// <summary>The server side of TLS: this certificate, and the coordinator's admission rules; null = plaintext.</summary>
    public ServerSecurity? Server => Tls is null ? null : new ServerSecurity(Tls, AccessPolicy.Coordinator());

    /// <summary>Loads TLS and join tokens; every problem is an <see cref="ArgumentException"/> naming the setting or file.</summary>
    public static CoordinatorSecurity Create(CoordinatorOptions options)
    {
        var settings = options.Tls ?? new TlsSettings();
        if (settings.Insecure && settings.HasMaterial)
            throw new ArgumentException("Coordinator:Tls: --insecure (Insecure) and TLS files (--tls-dir, --ca, --cert, --key, --ca-key) exclude each other");
        var tokens = LoadJoinTokens(options);
        if (settings.HasMaterial)
        {
            var tls = settings.Load("Coordinator:Tls", CertificateNeed.Required, signer: true);
            var own = tls.Certificate!;
            var identity = tls.Identify(own, asServer: true, out var error)
                ?? throw new ArgumentException($"Coordinator:Tls: {settings.CertPath} cannot serve: {error}");
            if (identity.Role != ClusterRoles.Coordinator)
                throw new ArgumentException($"Coordinator:Tls: {settings.CertPath} is a {identity.Role} certificate (\"{own.Subject}\"); the coordinator needs the one `dtrain certs init` writes to DIR/coordinator (OU=coordinator)");
            if (tls.Identify(own, asServer: false, out error) is null)
                throw new ArgumentException($"Coordinator:Tls: {settings.CertPath} cannot dial workers: {error}");
            return new CoordinatorSecurity(tls, null, tokens);
        }
        if (TlsSettings.IsLoopback(options.Listen)) return new CoordinatorSecurity(null, null, tokens);
        if (!settings.Insecure)
            throw new ArgumentException($"Coordinator:Listen {options.Listen} reaches beyond this machine, so TLS is required: make certificates with " +
                                        "`dtrain certs init DIR --host NAME` (NAME: the host name or IP workers and clients dial) and pass --tls-dir DIR/coordinator " +
                                        "(Coordinator:Tls:Dir); or accept plaintext without any authentication with --insecure (Coordinator:Tls:Insecure)");
        return new CoordinatorSecurity(null,
            $"the coordinator listens on {options.Listen}:{options.Port} without TLS or authentication (--insecure): anyone who reaches it can register workers and submit, cancel and download jobs",
            tokens);
    }

    private static byte[][] LoadJoinTokens(CoordinatorOptions options)
    {
        var tokens = new List<string>();
        foreach (var (t, i) in (options.JoinTokens ?? []).Select((t, i) => (t, i)))
        {
            if ((t ?? "").Trim().Length < MinJoinTokenLength)
                throw new ArgumentException($"Coordinator:JoinTokens:{i} is shorter than {MinJoinTokenLength} characters: use a random token, e.g. `head -c 24 /dev/urandom | base64`");
            tokens.Add(t!.Trim());
        }
        if (!string.IsNullOrWhiteSpace(options.JoinTokenFile))
        {
            var file = options.JoinTokenFile.Trim();
            if (!File.Exists(file)) throw new ArgumentException($"Coordinator:JoinTokenFile: {file} not found");
            var lines = File.ReadAllLines(file);
            var before = tokens.Count;
            for (var n = 0; n < lines.Length; n++)
            {
                var line = lines[n].Trim();
                if (line.Length == 0 || line.StartsWith('#')) continue;
                if (line.Length < MinJoinTokenLength)
                    throw new ArgumentException($"{file}:{n + 1}: join token shorter than {MinJoinTokenLength} characters: use a random token, e.g. `head -c 24 /dev/urandom | base64`");
                tokens.Add(line);
            }
            if (tokens.Count == before) throw new ArgumentException($"Coordinator:JoinTokenFile: {file} holds no token (one per line; # starts a comment)");
        }
        return [.. tokens.Select(Encoding.UTF8.GetBytes)];
    }

    /// <summary>Whether <paramref name="token"/> is one of the join tokens (compared in constant time).</summary>
    public bool IsJoinToken(string token)
    {
        if (string.IsNullOrEmpty(token)) return false;
        var given = Encoding.UTF8.GetBytes(token.Trim());
        var match = false;
        foreach (var t in joinTokens) match |= CryptographicOperations.FixedTimeEquals(t, given);
        return match;
    }

    /// <summary>"join token sha256 0a1b…" for one of the join tokens (a key for per-client limits that does not reveal it); null for any other string.</summary>
    public string? JoinTokenKey(string token) =>
        IsJoinToken(token) ? $"join token sha256 {Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(token.Trim())))[..16].ToLowerInvariant()}" : null;

    /// <summary>
    /// A registration admitted: what proved it, and (with TLS) how to sign the worker's certificate once it has an id,
    /// and the SHA-256 of the worker's public key (its signing request's, whose signature proves the worker holds the
    /// private key), which owns the worker's name and address in the registry ("" in plaintext: no key exists).
    /// </summary>
    public sealed record Admission(string Proof, Func<string, X509Certificate2>? Certify, string Key = "");

    /// <summary>
    /// Admits a worker that registers from <paramref name="address"/>, with <paramref name="joinToken"/> ("" for none) and
    /// <paramref name="csr"/> (its certificate signing request, PKCS#10; empty for none), over a connection that presented
    /// <paramref name="peer"/> (null: no certificate), or refuses it (<see cref="RefusedException"/>): over TLS it needs a
    /// worker certificate from the cluster CA or a join token, an https address and a certificate signing request; in
    /// plaintext, a join token when the coordinator has any.
    /// </summary>
    public Admission Admit(string address, string joinToken, ReadOnlyMemory<byte> csr, PeerIdentity? peer)
    {
        var tokenGiven = !string.IsNullOrEmpty(joinToken);
        var tokenOk = tokenGiven && IsJoinToken(joinToken);
        if (tokenGiven && !tokenOk)
            throw new RefusedException(RefusalKind.PermissionDenied, "Register refused: the join token is not one of this coordinator's (Coordinator:JoinTokens / --join-token-file)");
        if (Tls is null)
        {
            if (joinTokens.Length > 0 && !tokenOk)
                throw new RefusedException(RefusalKind.Unauthenticated, "Register refused: this coordinator admits workers with a join token only: start the worker with --join-token-file FILE");
            return new Admission(tokenOk ? "join token" : "none (plaintext)", null);
        }

        string proof;
        if (peer is { Role: ClusterRoles.Worker }) proof = $"certificate {peer}";
        else if (tokenOk) proof = "join token";
        else if (peer is not null)
            throw new RefusedException(RefusalKind.PermissionDenied, $"Register refused: {peer} is not a worker certificate; a worker joins with one (--tls-dir DIR/worker of `dtrain certs init`) or with a join token");
        else
            throw new RefusedException(RefusalKind.Unauthenticated, "Register refused: a worker must prove it may join: a worker certificate signed by the cluster CA on the connection (--tls-dir DIR/worker of `dtrain certs init`) or a join token (--join-token-file FILE)");

        if (!Uri.TryCreate(address, UriKind.Absolute, out var url) || url.Scheme != Uri.UriSchemeHttps)
            throw new RefusedException(RefusalKind.InvalidArgument, $"address \"{address}\" must be an https URL: this coordinator uses TLS, and so must its workers");
        if (csr.IsEmpty)
            throw new RefusedException(RefusalKind.InvalidArgument, "Register over TLS needs a certificate signing request (csr) for the worker's own certificate");
        CertificateRequest request;
        try
        {
            request = CertificateRequest.LoadSigningRequest(csr.ToArray(), HashAlgorithmName.SHA256, CertificateRequestLoadOptions.Default);
        }
        catch (CryptographicException e)
        {
            throw new RefusedException(RefusalKind.InvalidArgument, $"the certificate signing request (csr) is not a valid PKCS#10 request: {e.Message}");
        }
        var signer = Tls.Signer!;
        string[] hosts = [url.Host, "127.0.0.1", "localhost"];
        var key = Convert.ToHexString(SHA256.HashData(request.PublicKey.ExportSubjectPublicKeyInfo()));
        return new Admission(proof, id => ClusterCertificates.Sign(signer,
            new CertificateRequest(ClusterCertificates.Subject(id, ClusterRoles.Worker), request.PublicKey, HashAlgorithmName.SHA256),
            ClusterRoles.Worker, hosts, ClusterCertificates.IssuedWorkerValidity), key);
    }

    /// <summary>
    /// With TLS, refuses a heartbeat or leave of worker <paramref name="id"/> that comes with its token but with another
    /// certificate than the one it was issued (someone else speaking for it). Without TLS, or for an unknown id or
    /// another registration's token (a worker the coordinator forgot, which registers again), does nothing.
    /// <paramref name="peer"/> is the certificate the connection presented (null: none).
    /// </summary>
    public void CheckSpeaksFor(WorkerRegistry registry, string id, string token, PeerIdentity? peer, string what)
    {
        if (Tls is null) return;
        if (registry.Claim(id, token) is not (true, { Length: > 0 } pinned)) return;
        if (string.Equals(peer?.Sha256, pinned, StringComparison.OrdinalIgnoreCase)) return;
        throw new RefusedException(RefusalKind.PermissionDenied, $"{what} for worker {id} refused: {(peer is null ? "no certificate" : peer.ToString())} is not the certificate issued to {id} (sha256 {pinned[..16]}…)");
    }
}
