using System.Diagnostics;
using System.Security.Cryptography.X509Certificates;
using Dtrain.Collective;
using Dtrain.Rpc;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Security;

/// <summary>
/// A cluster CA and role directories in a temporary directory, laid out as `dtrain certs init` writes them
/// (DIR/coordinator, DIR/worker, DIR/client with ca.crt, tls.crt, tls.key; the coordinator's also ca.key), plus
/// certificates issued on demand for attackers and stand-ins.
/// </summary>
public sealed class TestPki : IDisposable
{
    private readonly bool owned = true;

    /// <summary>The directories `dtrain certs init <paramref name="root"/>` wrote (not deleted on dispose).</summary>
    public TestPki(string root)
    {
        Root = root;
        owned = false;
        Authority = new TlsSettings { Ca = CaPath, CaKey = Path.Combine(root, TlsSettings.CaKeyFile) }.Load("test", CertificateNeed.None, signer: true).Signer!;
    }

    public TestPki()
    {
        Root = Directory.CreateTempSubdirectory("dtrain-pki-").FullName;
        Authority = ClusterCertificates.CreateAuthority("test CA", TimeSpan.FromDays(30));
        var ca = Authority.ExportCertificatePem();
        ClusterCertificates.WriteFile(CaPath, ca, secret: false);
        ClusterCertificates.WriteFile(Path.Combine(Root, TlsSettings.CaKeyFile), ClusterCertificates.KeyPem(Authority), secret: true);
        Write("coordinator", ClusterCertificates.Issue(Authority, "coordinator", ClusterRoles.Coordinator, ["localhost", "127.0.0.1"], TimeSpan.FromDays(30)));
        ClusterCertificates.WriteFile(Path.Combine(CoordinatorDir, TlsSettings.CaKeyFile), ClusterCertificates.KeyPem(Authority), secret: true);
        Write("worker", ClusterCertificates.Issue(Authority, "worker", ClusterRoles.Worker, ["localhost", "127.0.0.1"], TimeSpan.FromDays(30)));
        Write("client", ClusterCertificates.Issue(Authority, "admin", ClusterRoles.Client, [], TimeSpan.FromDays(30)));
    }

    public string Root { get; }
    public X509Certificate2 Authority { get; }
    public string CaPath => Path.Combine(Root, TlsSettings.CaFile);
    public string CoordinatorDir => Path.Combine(Root, "coordinator");
    public string WorkerDir => Path.Combine(Root, "worker");
    public string ClientDir => Path.Combine(Root, "client");

    /// <summary>A certificate (with its key) from this CA.</summary>
    public X509Certificate2 Issue(string name, string role) => ClusterCertificates.Issue(Authority, name, role, ["localhost", "127.0.0.1"], TimeSpan.FromDays(30));

    /// <summary>The CA and <paramref name="own"/> as a process's TLS material (null: a caller with the CA but no certificate).</summary>
    public ClusterTls Tls(X509Certificate2? own) => new(Load(CaPath), CaPath, own);

    /// <summary>The TLS material of one role directory, loaded as the servers and the CLI load it.</summary>
    public ClusterTls TlsOf(string dir) => new TlsSettings { Dir = dir }.Load("test", CertificateNeed.Optional);

    /// <summary>A channel to a coordinator or worker as <paramref name="own"/> (no certificate when null), checking the server is <paramref name="expected"/>.</summary>
    public GrpcChannel Channel(string address, X509Certificate2? own, ExpectedPeer? expected = null) =>
        Channels.Create(address, Tls(own), expected ?? ExpectedPeer.AnyMember);

    private static X509Certificate2Collection Load(string path)
    {
        var c = new X509Certificate2Collection();
        c.ImportFromPemFile(path);
        return c;
    }

    private void Write(string dir, X509Certificate2 certificate)
    {
        var target = Path.Combine(Root, dir);
        Directory.CreateDirectory(target);
        ClusterCertificates.WriteFile(Path.Combine(target, TlsSettings.CaFile), Authority.ExportCertificatePem(), secret: false);
        ClusterCertificates.WriteFile(Path.Combine(target, TlsSettings.CertFile), certificate.ExportCertificatePem(), secret: false);
        ClusterCertificates.WriteFile(Path.Combine(target, TlsSettings.KeyFile), ClusterCertificates.KeyPem(certificate), secret: true);
        certificate.Dispose();
    }

    public void Dispose()
    {
        Authority.Dispose();
        if (!owned) return;
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
    }
}

/// <summary>A bare gRPC server on loopback built like the worker's (GrpcServerHost: TLS, the access interceptor), for ring and pipeline tests.</summary>
public static class TlsHosts
{
    public static async Task<WebApplication> StartAsync(ServerSecurity security, Action<WebApplicationBuilder> services, Action<WebApplication> map)
    {
        var builder = GrpcServerHost.CreateBuilder("127.0.0.1", 0, 64 << 20, l => l.SetMinimumLevel(LogLevel.Warning), security: security);
        services(builder);
        var app = builder.Build();
        map(app);
        await app.StartAsync();
        return app;
    }
}

/// <summary>A worker of a TLS ring test: its own certificate issued by the test CA, what its peers expect of it, and its server once started.</summary>
public sealed class TlsWorker(TestPki pki, string name) : IDisposable
{
    public X509Certificate2 Certificate { get; } = pki.Issue(name, ClusterRoles.Worker);
    public ClusterTls Tls { get; } = pki.Tls(null);
    public ExpectedPeer Expected => ExpectedPeer.Worker(name, ClusterCertificates.Sha256(Certificate));
    public WebApplication? App { get; set; }
    public string Address => GrpcServerHost.LocalAddress(App!);
    public DataPlane Plane => App!.Services.GetRequiredService<DataPlane>();

    public ClusterTls Own()
    {
        Tls.Certificate = Certificate;
        return Tls;
    }

    public void Dispose() => Certificate.Dispose();
}

/// <summary>The real `dtrain` CLI as a child process, with extra environment variables (DTRAIN_TLS_DIR and the like).</summary>
public static class TlsCli
{
    public static Support.CliRunner.Result Run(string workDir, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("exec");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "dtrain.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DTRAIN_THREADS"] = "1";
        foreach (var name in new[] { "DTRAIN_TLS_DIR", "DTRAIN_CA", "DTRAIN_CERT", "DTRAIN_KEY", "DTRAIN_COORDINATOR", "DTRAIN_ADDRESS_FILE" }) psi.Environment.Remove(name);
        foreach (var (k, v) in environment) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"dtrain {string.Join(' ', args)} did not finish within 3 minutes");
        }
        return new Support.CliRunner.Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
