using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Security;

/// <summary>`dtrain certs init` and `dtrain certs issue`, run as the real CLI: the chain, names, usages and roles of what they write, the files' modes, and that a cluster runs on them.</summary>
public class CertsCommandTests
{
    static X509Certificate2 Certificate(string dir) => X509Certificate2.CreateFromPemFile(Path.Combine(dir, "tls.crt"), Path.Combine(dir, "tls.key"));

    static X509Chain ChainTo(string caPath, X509Certificate2 leaf, string usage)
    {
        var ca = new X509Certificate2Collection();
        ca.ImportFromPemFile(caPath);
        var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new Oid(usage));
        Assert.True(chain.Build(leaf), $"{leaf.Subject} for {usage}: {string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation))}");
        return chain;
    }

    static UnixFileMode Mode(string path) => File.GetUnixFileMode(path) & (UnixFileMode)0x1FF;

    const string ServerAuth = "1.3.6.1.5.5.7.3.1", ClientAuth = "1.3.6.1.5.5.7.3.2";
    const UnixFileMode Secret = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    [Fact]
    public async Task Init_writes_a_ca_and_role_certificates_that_chain_name_their_hosts_and_keep_keys_private()
    {
        using var tmp = new TempDir();
        var dir = Path.Combine(tmp.Path, "pki");
        var init = CliRunner.Run(tmp.Path, "certs", "init", dir, "--host", "coord.example", "--host", "10.0.0.5");
        Assert.True(init.ExitCode == 0, init.ToString());
        Assert.Contains("dtrain serve --listen 0.0.0.0 --tls-dir", init.Stdout);

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, Mode(dir));
        foreach (var key in new[] { "ca.key", "coordinator/ca.key", "coordinator/tls.key", "worker/tls.key", "client/tls.key" })
            Assert.True(Mode(Path.Combine(dir, key)) == Secret, $"{key}: mode {Mode(Path.Combine(dir, key))}");
        var ca = X509Certificate2.CreateFromPemFile(Path.Combine(dir, "ca.crt"), Path.Combine(dir, "ca.key"));
        Assert.True(ca.Extensions.OfType<X509BasicConstraintsExtension>().Single().CertificateAuthority);
        foreach (var role in new[] { "coordinator", "worker", "client" })
            Assert.Equal(File.ReadAllText(Path.Combine(dir, "ca.crt")), File.ReadAllText(Path.Combine(dir, role, "ca.crt")));
        Assert.Equal(File.ReadAllText(Path.Combine(dir, "ca.key")), File.ReadAllText(Path.Combine(dir, "coordinator", "ca.key")));

        var caPath = Path.Combine(dir, "ca.crt");
        using var coordinator = Certificate(Path.Combine(dir, "coordinator"));
        using var worker = Certificate(Path.Combine(dir, "worker"));
        using var client = Certificate(Path.Combine(dir, "client"));
        foreach (var (cert, role) in new[] { (coordinator, "coordinator"), (worker, "worker"), (client, "client") })
        {
            Assert.Equal(role, ClusterCertificates.NameAndRole(cert).Role);
            using var chain = ChainTo(caPath, cert, ClientAuth);
            Assert.Equal(ca.Thumbprint, chain.ChainElements[^1].Certificate.Thumbprint);
            Assert.True(cert.HasPrivateKey);
        }
        using (ChainTo(caPath, coordinator, ServerAuth)) { }
        using (ChainTo(caPath, worker, ServerAuth)) { }
        var clientAsServer = new X509Chain();
        clientAsServer.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        clientAsServer.ChainPolicy.CustomTrustStore.Add(ca);
        clientAsServer.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        clientAsServer.ChainPolicy.ApplicationPolicy.Add(new Oid(ServerAuth));
        Assert.False(clientAsServer.Build(client), "the client certificate must not serve");

        Assert.Equal(["coord.example", "localhost", "10.0.0.5", "127.0.0.1", "::1"], ClusterCertificates.Hosts(coordinator));
        Assert.Equal(["localhost", "127.0.0.1", "::1"], ClusterCertificates.Hosts(worker));
        Assert.Empty(ClusterCertificates.Hosts(client));

        // A second init refuses to overwrite; --if-absent leaves everything as it is.
        var before = File.ReadAllBytes(Path.Combine(dir, "coordinator", "tls.crt"));
        var again = CliRunner.Run(tmp.Path, "certs", "init", dir);
        Assert.True(again.ExitCode == 2, again.ToString());
        Assert.Contains("already holds certificates", again.Stderr);
        var ifAbsent = CliRunner.Run(tmp.Path, "certs", "init", dir, "--if-absent");
        Assert.True(ifAbsent.ExitCode == 0, ifAbsent.ToString());
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(dir, "coordinator", "tls.crt")));

        // And a cluster runs on them: a coordinator with DIR/coordinator, a worker joining with DIR/worker, this client with DIR/client.
        using var pki = new TestPki(dir);
        await using var cluster = await InProcessCluster.StartAsync(1, pki: pki);
        Assert.Equal(WorkerState.Idle, cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single().State);
    }

    [Fact]
    public void Issue_adds_certificates_of_each_role_and_re_issues_only_with_force()
    {
        using var tmp = new TempDir();
        Assert.Contains("certs", CliRunner.Run(tmp.Path, "--help").Stdout);
        foreach (var verb in new[] { new[] { "certs", "--help" }, ["certs", "init", "--help"], ["certs", "issue", "--help"] })
        {
            var help = CliRunner.Run(tmp.Path, verb);
            Assert.True(help.ExitCode == 0 && help.Stdout.Contains("Usage:", StringComparison.Ordinal), help.ToString());
        }
        var dir = Path.Combine(tmp.Path, "pki");
        Assert.Equal(0, CliRunner.Run(tmp.Path, "certs", "init", dir).ExitCode);

        var gpu = CliRunner.Run(tmp.Path, "certs", "issue", dir, "--name", "gpu-node-1", "--host", "10.1.2.3");
        Assert.True(gpu.ExitCode == 0, gpu.ToString());
        using (var cert = Certificate(Path.Combine(dir, "gpu-node-1")))
        {
            Assert.Equal(("gpu-node-1", "worker"), ClusterCertificates.NameAndRole(cert));
            Assert.Contains("10.1.2.3", ClusterCertificates.Hosts(cert));
            using (ChainTo(Path.Combine(dir, "ca.crt"), cert, ServerAuth)) { }
        }
        Assert.Equal(Secret, Mode(Path.Combine(dir, "gpu-node-1", "tls.key")));

        var alice = CliRunner.Run(tmp.Path, "certs", "issue", dir, "--name", "alice", "--role", "client");
        Assert.True(alice.ExitCode == 0, alice.ToString());
        using (var cert = Certificate(Path.Combine(dir, "alice"))) Assert.Equal(("alice", "client"), ClusterCertificates.NameAndRole(cert));

        var first = File.ReadAllText(Path.Combine(dir, "alice", "tls.crt"));
        var again = CliRunner.Run(tmp.Path, "certs", "issue", dir, "--name", "alice", "--role", "client");
        Assert.True(again.ExitCode == 2, again.ToString());
        Assert.Contains("--force", again.Stderr);
        var forced = CliRunner.Run(tmp.Path, "certs", "issue", dir, "--name", "alice", "--role", "client", "--force");
        Assert.True(forced.ExitCode == 0, forced.ToString());
        Assert.NotEqual(first, File.ReadAllText(Path.Combine(dir, "alice", "tls.crt")));

        var badRole = CliRunner.Run(tmp.Path, "certs", "issue", dir, "--name", "x", "--role", "admin");
        Assert.Equal(2, badRole.ExitCode);
        var badHost = CliRunner.Run(tmp.Path, "certs", "issue", dir, "--name", "x", "--host", "not a host");
        Assert.Equal(2, badHost.ExitCode);
        Assert.Contains("not a host", badHost.Stderr);
        var noCa = CliRunner.Run(tmp.Path, "certs", "issue", Path.Combine(tmp.Path, "elsewhere"), "--name", "x");
        Assert.Equal(2, noCa.ExitCode);
        Assert.Contains("ca.crt not found", noCa.Stderr);
    }
}
