using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Dtrain.Rpc;

/// <summary>Whether a process needs its own certificate when its TLS settings are loaded.</summary>
public enum CertificateNeed
{
    /// <summary>No own certificate (a client that only checks the server).</summary>
    None,
    /// <summary>Used when given (both files), else none.</summary>
    Optional,
    /// <summary>Must be given.</summary>
    Required,
}

/// <summary>
/// TLS settings of a server (config section <c>Coordinator:Tls</c> / <c>Worker:Tls</c>, or <c>--tls-dir</c>,
/// <c>--ca</c>, <c>--cert</c>, <c>--key</c>) or of the CLI (the same options, or DTRAIN_TLS_DIR, DTRAIN_CA,
/// DTRAIN_CERT, DTRAIN_KEY). A directory holds the files `dtrain certs init` writes for one role: <c>ca.crt</c> (the
/// cluster CA, or a bundle of CAs), <c>tls.crt</c> and <c>tls.key</c> (this party's certificate and key) and, for
/// the coordinator, <c>ca.key</c>; single files override the directory's.
/// </summary>
public sealed record TlsSettings
{
    public const string CaFile = "ca.crt";
    public const string CertFile = "tls.crt";
    public const string KeyFile = "tls.key";
    public const string CaKeyFile = "ca.key";

    /// <summary>A directory with ca.crt, tls.crt, tls.key (and, for the coordinator, ca.key).</summary>
    public string? Dir { get; init; }
    /// <summary>The cluster CA certificate(s), PEM.</summary>
    public string? Ca { get; init; }
    /// <summary>This party's certificate, PEM.</summary>
    public string? Cert { get; init; }
    /// <summary>This party's private key, PEM.</summary>
    public string? Key { get; init; }
    /// <summary>The CA's private key (the coordinator signs each worker's certificate with it).</summary>
    public string? CaKey { get; init; }
    /// <summary>Listen beyond loopback without TLS or authentication (loudly logged).</summary>
    public bool Insecure { get; init; }

    /// <summary>Whether any TLS file or directory is set.</summary>
    public bool HasMaterial => new[] { Dir, Ca, Cert, Key, CaKey }.Any(v => !string.IsNullOrWhiteSpace(v));

    /// <summary>These settings with each value that <paramref name="over"/> sets replaced by its (command line over configuration).</summary>
    public TlsSettings Over(TlsSettings? over) => over is null ? this : new TlsSettings
    {
        Dir = Set(over.Dir) ?? Dir,
        Ca = Set(over.Ca) ?? Ca,
        Cert = Set(over.Cert) ?? Cert,
        Key = Set(over.Key) ?? Key,
        CaKey = Set(over.CaKey) ?? CaKey,
        Insecure = over.Insecure || Insecure,
    };

    public string? CaPath => Set(Ca) ?? InDir(CaFile);
    public string? CertPath => Set(Cert) ?? InDir(CertFile);
    public string? KeyPath => Set(Key) ?? InDir(KeyFile);
    public string? CaKeyPath => Set(CaKey) ?? InDir(CaKeyFile);

    private string? InDir(string file) => Set(Dir) is { } dir ? Path.Combine(dir, file) : null;

    private static string? Set(string? value) => string.IsNullOrWhiteSpace(value) ? null : value.Trim();

    /// <summary>Whether <paramref name="listen"/> (an IP address) is a loopback address: plaintext is allowed only there.</summary>
    public static bool IsLoopback(string listen) =>
        IPAddress.TryParse(listen.Trim('[', ']'), out var ip) ? IPAddress.IsLoopback(ip) : string.Equals(listen, "localhost", StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Loads the files; every problem is an <see cref="ArgumentException"/> naming the file and <paramref name="where"/>
    /// (the setting, e.g. "Coordinator:Tls" or "--tls-dir"). The own certificate must chain to the CA and be valid now.
    /// </summary>
    public ClusterTls Load(string where, CertificateNeed need, bool signer = false, TimeProvider? time = null)
    {
        var caPath = CaPath ?? throw new ArgumentException($"{where}: no cluster CA given: set --tls-dir DIR (with {CaFile}) or --ca FILE");
        var authorities = ReadAuthorities(where, caPath);

        X509Certificate2? own = null;
        var certPath = CertPath;
        var keyPath = KeyPath;
        var explicitCert = Set(Cert) is not null || Set(Key) is not null;
        if (need != CertificateNeed.None && certPath is not null && keyPath is not null
            && (need == CertificateNeed.Required || explicitCert || File.Exists(certPath) || File.Exists(keyPath)))
        {
            Require(where, certPath, "this party's certificate");
            Require(where, keyPath, "this party's private key");
            try
            {
                own = X509Certificate2.CreateFromPemFile(certPath, keyPath);
            }
            catch (CryptographicException e)
            {
                throw new ArgumentException($"{where}: cannot load the certificate {certPath} with the key {keyPath}: {e.Message}");
            }
            var now = (time ?? TimeProvider.System).GetLocalNow().DateTime;
            if (own.NotAfter < now) throw new ArgumentException($"{where}: the certificate {certPath} expired on {own.NotAfter:u}: issue a new one (`dtrain certs issue`)");
            if (own.NotBefore > now.AddMinutes(5)) throw new ArgumentException($"{where}: the certificate {certPath} is valid only from {own.NotBefore:u} (check this machine's clock)");
        }
        else if (need == CertificateNeed.Required)
        {
            throw new ArgumentException($"{where}: no certificate given: set --tls-dir DIR (with {CertFile} and {KeyFile}) or --cert FILE --key FILE");
        }

        X509Certificate2? authority = null;
        if (signer)
        {
            var caKeyPath = CaKeyPath ?? throw new ArgumentException($"{where}: the CA's private key is needed to sign each worker's certificate: put {CaKeyFile} into the TLS directory or set --ca-key FILE");
            Require(where, caKeyPath, "the CA's private key, with which the coordinator signs each worker's certificate");
            authority = MatchSigner(where, authorities, caPath, caKeyPath);
        }

        var tls = new ClusterTls(authorities, caPath, own, authority, time);
        if (own is not null && tls.Identify(own, asServer: false, out var error) is null && tls.Identify(own, asServer: true, out _) is null)
            throw new ArgumentException($"{where}: {certPath}: {error}");
        return tls;
    }

    private static void Require(string where, string path, string what)
    {
        if (!File.Exists(path))
            throw new ArgumentException($"{where}: {path} not found ({what}); `dtrain certs init DIR` writes {CaFile}, {CertFile} and {KeyFile} into DIR/coordinator, DIR/worker and DIR/client");
    }

    private static X509Certificate2Collection ReadAuthorities(string where, string path)
    {
        Require(where, path, "the cluster CA certificate");
        var bundle = new X509Certificate2Collection();
        try
        {
            bundle.ImportFromPemFile(path);
        }
        catch (CryptographicException e)
        {
            throw new ArgumentException($"{where}: {path} is not a PEM certificate bundle: {e.Message}");
        }
        if (bundle.Count == 0) throw new ArgumentException($"{where}: {path} holds no certificate (expected the cluster CA, PEM)");
        foreach (var c in bundle)
        {
            if (c.Extensions.OfType<X509BasicConstraintsExtension>().FirstOrDefault() is not { CertificateAuthority: true })
                throw new ArgumentException($"{where}: {path}: \"{c.Subject}\" is not a CA certificate (the file must hold the cluster CA, not a party's certificate)");
        }
        return bundle;
    }

    private static X509Certificate2 MatchSigner(string where, X509Certificate2Collection authorities, string caPath, string keyPath)
    {
        var pem = File.ReadAllText(keyPath);
        AsymmetricAlgorithm key;
        try
        {
            var ec = ECDsa.Create();
            try
            {
                ec.ImportFromPem(pem);
                key = ec;
            }
            catch (Exception e) when (e is CryptographicException or ArgumentException)
            {
                ec.Dispose();
                var rsa = RSA.Create();
                rsa.ImportFromPem(pem);
                key = rsa;
            }
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new ArgumentException($"{where}: {keyPath} is not a PEM private key (ECDSA or RSA): {e.Message}");
        }
        using (key)
        {
            var spki = key.ExportSubjectPublicKeyInfo();
            foreach (var c in authorities)
            {
                if (!c.PublicKey.ExportSubjectPublicKeyInfo().AsSpan().SequenceEqual(spki)) continue;
                return key is ECDsa e ? c.CopyWithPrivateKey(e) : c.CopyWithPrivateKey((RSA)key);
            }
        }
        throw new ArgumentException($"{where}: the CA key {keyPath} belongs to none of the CA certificates in {caPath}");
    }
}
