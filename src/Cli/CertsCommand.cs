using System.CommandLine;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using Dtrain.Rpc;

namespace Dtrain.Cli;

/// <summary>
/// `dtrain certs init DIR` makes a cluster CA and the certificates of each role; `dtrain certs issue DIR --name NAME`
/// adds one. Made with .NET's CertificateRequest (ECDSA P-256, SHA-256); PEM files, private keys mode 0600. Each role
/// directory holds what that party mounts: ca.crt, tls.crt, tls.key (and, for the coordinator, ca.key).
/// </summary>
public static partial class CertsCommand
{
    static readonly string[] LocalHosts = ["localhost", "127.0.0.1", "::1"];

    public static Command Create()
    {
        var cmd = new Command("certs", "Make the cluster's TLS certificates: a CA, and certificates for the coordinator, workers and clients (no openssl needed).");
        cmd.Subcommands.Add(Init());
        cmd.Subcommands.Add(Issue());
        return cmd;
    }

    static Option<string[]> Hosts(string what) => new("--host")
    {
        Description = $"A host name or IP {what} (repeat for several); localhost, 127.0.0.1 and ::1 are always included.",
        AllowMultipleArgumentsPerToken = false,
    };

    static Option<int> Days(int fallback, string what) => new("--days") { Description = $"Days {what} valid (default {fallback}).", DefaultValueFactory = _ => fallback };

    static Command Init()
    {
        var dir = new Argument<string>("dir") { Description = "Directory to create the CA and certificates in (created if missing, mode 0700)." };
        var hosts = Hosts("clients and workers dial the coordinator at (e.g. --host coordinator --host 10.0.0.5)");
        var days = Days(365, "the coordinator, worker and client certificates are");
        var caDays = new Option<int>("--ca-days") { Description = "Days the CA is valid (default 3650).", DefaultValueFactory = _ => 3650 };
        var ifAbsent = new Option<bool>("--if-absent") { Description = "Do nothing (exit 0) when DIR already holds the role directories' certificates (for a container's one-shot start)." };
        var cmd = new Command("init",
            "Create a cluster CA (DIR/ca.crt, DIR/ca.key) and certificates: DIR/coordinator (for `serve --tls-dir`, with a copy of the CA key to sign each " +
            "worker's certificate), DIR/worker (the bootstrap certificate workers join with), DIR/client (for the CLI: DTRAIN_TLS_DIR).");
        cmd.Arguments.Add(dir);
        foreach (var o in new Option[] { hosts, days, caDays, ifAbsent }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var root = CliPaths.DirectoryToUse(r.GetValue(dir)!, "certs init DIR", "the directory to create the CA and certificates in");
            var validity = CheckDays(r.GetValue(days), "--days");
            var caValidity = CheckDays(r.GetValue(caDays), "--ca-days");
            var extra = r.GetValue(hosts) ?? [];
            string[] roles = [ClusterRoles.Coordinator, ClusterRoles.Worker, ClusterRoles.Client];
            var present = roles.Where(role => File.Exists(Path.Combine(root, role, TlsSettings.CertFile))).ToList();
            if (r.GetValue(ifAbsent) && present.Count == roles.Length)
            {
                Console.WriteLine($"{root} already holds the coordinator, worker and client certificates; nothing to do");
                return CliErrors.Ok;
            }
            var existing = new[] { Path.Combine(root, TlsSettings.CaKeyFile), Path.Combine(root, TlsSettings.CaFile) }
                .Concat(roles.SelectMany(role => new[] { TlsSettings.CaFile, TlsSettings.CertFile, TlsSettings.KeyFile, TlsSettings.CaKeyFile }.Select(f => Path.Combine(root, role, f))))
                .Where(File.Exists).ToList();
            if (existing.Count > 0)
                throw new ArgumentException($"{root} already holds certificates ({string.Join(", ", existing.Take(3))}{(existing.Count > 3 ? ", ..." : "")}): " +
                                            "choose an empty directory, or add certificates with `dtrain certs issue`");
            foreach (var h in extra) if (!IsHost(h)) throw new ArgumentException($"--host \"{h}\" is neither an IP address nor a DNS name");

            ClusterCertificates.CreatePrivateDirectory(root);
            using var ca = ClusterCertificates.CreateAuthority($"dtrain cluster CA {DateTime.UtcNow:yyyy-MM-dd}", caValidity);
            var caPem = ca.ExportCertificatePem();
            var caKey = ClusterCertificates.KeyPem(ca);
            ClusterCertificates.WriteFile(Path.Combine(root, TlsSettings.CaFile), caPem, secret: false);
            ClusterCertificates.WriteFile(Path.Combine(root, TlsSettings.CaKeyFile), caKey, secret: true);

            using var coordinator = ClusterCertificates.Issue(ca, "coordinator", ClusterRoles.Coordinator, [.. extra, .. LocalHosts], validity);
            Write(root, ClusterRoles.Coordinator, caPem, coordinator, overwrite: false);
            ClusterCertificates.WriteFile(Path.Combine(root, ClusterRoles.Coordinator, TlsSettings.CaKeyFile), caKey, secret: true);
            using var worker = ClusterCertificates.Issue(ca, "worker", ClusterRoles.Worker, LocalHosts, validity);
            Write(root, ClusterRoles.Worker, caPem, worker, overwrite: false);
            using var client = ClusterCertificates.Issue(ca, "admin", ClusterRoles.Client, [], validity);
            Write(root, ClusterRoles.Client, caPem, client, overwrite: false);

            var host = extra.FirstOrDefault() ?? "127.0.0.1";
            Console.WriteLine($"cluster CA:   {Path.Combine(root, TlsSettings.CaFile)} (its key {TlsSettings.CaKeyFile}, mode 0600, signs every certificate: keep it safe), valid until {ca.NotAfter:yyyy-MM-dd}");
            Console.WriteLine($"coordinator:  {Path.Combine(root, ClusterRoles.Coordinator)}/  for {string.Join(", ", ClusterCertificates.Hosts(coordinator))}");
            Console.WriteLine($"              dtrain serve --listen 0.0.0.0 --tls-dir {Path.Combine(root, ClusterRoles.Coordinator)}");
            Console.WriteLine($"worker:       {Path.Combine(root, ClusterRoles.Worker)}/  (bootstrap: each worker gets its own certificate from the coordinator when it joins)");
            Console.WriteLine($"              dtrain worker --coordinator https://{host}:5000 --tls-dir {Path.Combine(root, ClusterRoles.Worker)}");
            Console.WriteLine($"client:       {Path.Combine(root, ClusterRoles.Client)}/  (the CLI)");
            Console.WriteLine($"              export DTRAIN_TLS_DIR={Path.Combine(root, ClusterRoles.Client)} DTRAIN_COORDINATOR=https://{host}:5000");
            Console.WriteLine($"certificates valid until {coordinator.NotAfter:yyyy-MM-dd}; more with `dtrain certs issue {root} --name NAME --role worker|client|coordinator`");
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Issue()
    {
        var dir = new Argument<string>("dir") { Description = "The directory `dtrain certs init` made (its ca.crt and ca.key sign the certificate)." };
        var name = new Option<string>("--name") { Description = "The certificate's name (CN) and its directory DIR/NAME.", Required = true };
        var role = new Option<string>("--role") { Description = "worker (a bootstrap certificate to join with), client (the CLI), or coordinator (default worker).", DefaultValueFactory = _ => ClusterRoles.Worker };
        var hosts = Hosts("the certificate is for (a coordinator's: the names clients and workers dial)");
        var days = Days(365, "the certificate is");
        var force = new Option<bool>("--force") { Description = "Replace DIR/NAME's certificate and key if they exist (re-issue)." };
        var cmd = new Command("issue", "Issue one more certificate from the cluster CA into DIR/NAME (ca.crt, tls.crt, tls.key).");
        cmd.Arguments.Add(dir);
        foreach (var o in new Option[] { name, role, hosts, days, force }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var root = Path.GetFullPath(r.GetValue(dir)!);
            var who = r.GetValue(name)!;
            if (!SafeName().IsMatch(who) || who is "." or "..") throw new ArgumentException($"--name \"{who}\" must be letters, digits and ._- (it names the directory DIR/{who})");
            var kind = r.GetValue(role)!;
            if (!ClusterRoles.All.Contains(kind)) throw new ArgumentException($"--role \"{kind}\" must be one of {string.Join(", ", ClusterRoles.All)}");
            var validity = CheckDays(r.GetValue(days), "--days");
            var extra = r.GetValue(hosts) ?? [];
            foreach (var h in extra) if (!IsHost(h)) throw new ArgumentException($"--host \"{h}\" is neither an IP address nor a DNS name");
            var authority = new TlsSettings { Ca = Path.Combine(root, TlsSettings.CaFile), CaKey = Path.Combine(root, TlsSettings.CaKeyFile) }
                .Load($"dtrain certs issue {root}", CertificateNeed.None, signer: true).Signer!;
            var target = Path.Combine(root, who);
            if (!r.GetValue(force) && File.Exists(Path.Combine(target, TlsSettings.CertFile)))
                throw new ArgumentException($"{Path.Combine(target, TlsSettings.CertFile)} exists already: pass --force to re-issue it, or choose another --name");
            using var issued = ClusterCertificates.Issue(authority, who, kind, kind == ClusterRoles.Client ? extra : [.. extra, .. LocalHosts], validity);
            ClusterCertificates.CreatePrivateDirectory(target);
            Write(root, who, File.ReadAllText(Path.Combine(root, TlsSettings.CaFile)), issued, overwrite: r.GetValue(force));
            var names = ClusterCertificates.Hosts(issued);
            Console.WriteLine($"{target}/: {kind} certificate \"{issued.Subject}\"{(names.Count == 0 ? "" : $" for {string.Join(", ", names)}")}, valid until {issued.NotAfter:yyyy-MM-dd}");
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static void Write(string root, string name, string caPem, X509Certificate2 certificate, bool overwrite)
    {
        var target = Path.Combine(root, name);
        ClusterCertificates.CreatePrivateDirectory(target);
        ClusterCertificates.WriteFile(Path.Combine(target, TlsSettings.CaFile), caPem, secret: false, overwrite);
        ClusterCertificates.WriteFile(Path.Combine(target, TlsSettings.CertFile), certificate.ExportCertificatePem(), secret: false, overwrite);
        ClusterCertificates.WriteFile(Path.Combine(target, TlsSettings.KeyFile), ClusterCertificates.KeyPem(certificate), secret: true, overwrite);
    }

    static TimeSpan CheckDays(int days, string option) =>
        days is >= 1 and <= 36500 ? TimeSpan.FromDays(days) : throw new ArgumentException($"{option} {days} must be in [1, 36500]");

    static bool IsHost(string host) =>
        System.Net.IPAddress.TryParse(host.Trim('[', ']'), out _) || Uri.CheckHostName(host) == UriHostNameType.Dns;

    [GeneratedRegex("^[A-Za-z0-9._-]+$")]
    private static partial Regex SafeName();
}
