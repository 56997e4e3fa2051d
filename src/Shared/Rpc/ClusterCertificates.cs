using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Dtrain.Rpc;

/// <summary>
/// The parties of a cluster, as written in their certificates (Subject <c>OU=ROLE, CN=NAME, O=dtrain</c>): the
/// coordinator, workers, and clients (the CLI, admins).
/// </summary>
public static class ClusterRoles
{
    public const string Coordinator = "coordinator";
    public const string Worker = "worker";
    public const string Client = "client";

    public static readonly IReadOnlyList<string> All = [Coordinator, Worker, Client];
}

/// <summary>
/// The cluster's certificates, made with .NET's <see cref="CertificateRequest"/> (no openssl): a CA, and certificates
/// it signs for each role. Keys are ECDSA P-256; files are PEM (certificates) and PKCS#8 PEM (keys, mode 0600).
/// </summary>
public static class ClusterCertificates
{
    public const string Organization = "dtrain";
    const string ServerAuth = "1.3.6.1.5.5.7.3.1";
    const string ClientAuth = "1.3.6.1.5.5.7.3.2";

    /// <summary>How long a certificate the coordinator signs for a worker at registration is valid.</summary>
    public static readonly TimeSpan IssuedWorkerValidity = TimeSpan.FromDays(365);

    /// <summary>A self-signed CA (path length 0: it signs only end-entity certificates), with its private key.</summary>
    public static X509Certificate2 CreateAuthority(string name, TimeSpan validity, TimeProvider? time = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var subject = new X500DistinguishedNameBuilder();
        subject.AddOrganizationName(Organization);
        subject.AddCommonName(name);
        var request = new CertificateRequest(subject.Build(), key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign | X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = (time ?? TimeProvider.System).GetUtcNow();
        return request.CreateSelfSigned(now.AddMinutes(-5), now.Add(validity));
    }

    /// <summary>The subject of a cluster certificate: <c>O=dtrain, OU=ROLE, CN=NAME</c>.</summary>
    public static X500DistinguishedName Subject(string name, string role)
    {
        if (!ClusterRoles.All.Contains(role)) throw new ArgumentException($"role \"{role}\" is not one of {string.Join(", ", ClusterRoles.All)}");
        if (string.IsNullOrWhiteSpace(name) || name.Any(c => char.IsControl(c) || c is ',' or '+' or '=' or '"' or '\\' or '<' or '>' or ';'))
            throw new ArgumentException($"certificate name \"{name}\" must be non-empty, without control characters or any of , + = \" \\ < > ;");
        var subject = new X500DistinguishedNameBuilder();
        subject.AddOrganizationName(Organization);
        subject.AddOrganizationalUnitName(role);
        subject.AddCommonName(name);
        return subject.Build();
    }

    /// <summary>A new key and a certificate for it, signed by <paramref name="authority"/> (which must hold its private key).</summary>
    public static X509Certificate2 Issue(X509Certificate2 authority, string name, string role, IEnumerable<string> hosts, TimeSpan validity,
        TimeProvider? time = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var issued = Sign(authority, new CertificateRequest(Subject(name, role), key, HashAlgorithmName.SHA256), role, hosts, validity, time);
        return issued.CopyWithPrivateKey(key);
    }

    /// <summary>
    /// Signs a certificate for the public key of <paramref name="request"/> (its own subject and extensions are
    /// replaced by this role's): EKU server and/or client authentication, the host names and IPs as SANs.
    /// </summary>
    public static X509Certificate2 Sign(X509Certificate2 authority, CertificateRequest request, string role, IEnumerable<string> hosts, TimeSpan validity,
        TimeProvider? time = null)
    {
        var leaf = new CertificateRequest(request.SubjectName, request.PublicKey, HashAlgorithmName.SHA256);
        leaf.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        leaf.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        var usages = new OidCollection();
        if (role != ClusterRoles.Client) usages.Add(new Oid(ServerAuth));
        usages.Add(new Oid(ClientAuth));
        leaf.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(usages, false));
        var names = new SubjectAlternativeNameBuilder();
        var any = false;
        foreach (var host in hosts.Select(h => h.Trim()).Where(h => h.Length > 0).Distinct(StringComparer.OrdinalIgnoreCase))
        {
            if (IPAddress.TryParse(host.Trim('[', ']'), out var ip)) names.AddIpAddress(ip);
            else if (Uri.CheckHostName(host) == UriHostNameType.Dns) names.AddDnsName(host);
            else throw new ArgumentException($"host \"{host}\" is neither an IP address nor a DNS name");
            any = true;
        }
        if (any) leaf.CertificateExtensions.Add(names.Build());
        leaf.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(leaf.PublicKey, false));
        leaf.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(authority, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        var now = (time ?? TimeProvider.System).GetUtcNow();
        var notAfter = now.Add(validity);
        if (notAfter > authority.NotAfter) notAfter = authority.NotAfter;
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7F;
        return leaf.Create(authority, now.AddMinutes(-5), notAfter, serial);
    }

    /// <summary>The hex SHA-256 of a certificate (what the coordinator pins for each worker).</summary>
    public static string Sha256(X509Certificate2 certificate) => certificate.GetCertHashString(HashAlgorithmName.SHA256);

    /// <summary>The CN and OU of a certificate's subject (null when absent).</summary>
    public static (string? Name, string? Role) NameAndRole(X509Certificate2 certificate)
    {
        string? name = null, role = null;
        foreach (var rdn in certificate.SubjectName.EnumerateRelativeDistinguishedNames())
        {
            var oid = rdn.GetSingleElementType().Value;
            if (oid == "2.5.4.3") name = rdn.GetSingleElementValue();
            else if (oid == "2.5.4.11") role = rdn.GetSingleElementValue();
        }
        return (name, role);
    }

    /// <summary>The DNS names and IP addresses of a certificate's subject alternative names.</summary>
    public static IReadOnlyList<string> Hosts(X509Certificate2 certificate)
    {
        var san = certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().FirstOrDefault();
        if (san is null) return [];
        return [.. san.EnumerateDnsNames(), .. san.EnumerateIPAddresses().Select(a => a.ToString())];
    }

    /// <summary>The private key as PKCS#8 PEM.</summary>
    public static string KeyPem(X509Certificate2 certificate) =>
        (certificate.GetECDsaPrivateKey() as AsymmetricAlgorithm ?? certificate.GetRSAPrivateKey() ?? throw new InvalidOperationException($"{certificate.Subject} has no private key"))
            .ExportPkcs8PrivateKeyPem();

    /// <summary>
    /// Writes <paramref name="text"/> to <paramref name="path"/> through a temporary file: mode 0600 for secrets
    /// (private keys), 0644 otherwise; an existing file is replaced only when <paramref name="overwrite"/>.
    /// </summary>
    public static void WriteFile(string path, string text, bool secret, bool overwrite = false)
    {
        if (!overwrite && File.Exists(path)) throw new IOException($"{path} exists already");
        var mode = secret ? UnixFileMode.UserRead | UnixFileMode.UserWrite : UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
        var tmp = path + ".tmp-" + Convert.ToHexString(RandomNumberGenerator.GetBytes(4));
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = mode;
        try
        {
            using (var stream = new FileStream(tmp, options))
            using (var writer = new StreamWriter(stream))
                writer.Write(text.EndsWith('\n') ? text : text + "\n");
            File.Move(tmp, path, overwrite);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    /// <summary>Creates a directory (and its parents) readable only by this user, if it does not exist.</summary>
    public static void CreatePrivateDirectory(string path)
    {
        if (Directory.Exists(path)) return;
        if (OperatingSystem.IsWindows()) Directory.CreateDirectory(path);
        else Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }
}
