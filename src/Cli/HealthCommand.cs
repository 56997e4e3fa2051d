using System.CommandLine;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Health.V1;

namespace Dtrain.Cli;

/// <summary>`dtrain health [ADDRESS]`: asks a coordinator or worker the standard gRPC health question (a container's HEALTHCHECK).</summary>
public static class HealthCommand
{
    public static Command Create()
    {
        var address = new Argument<string?>("address")
        {
            Description = $"Server URL, e.g. http://127.0.0.1:5000 or https://HOST:5000 (default: the address in ${GrpcServerHost.AddressFileVariable}, which a server writes " +
                          "once it listens, with its CA for TLS — the container image sets it; else $DTRAIN_COORDINATOR, else " + Remote.DefaultAddress + "). " +
                          "For https the cluster CA comes from --tls-dir / --ca (DTRAIN_TLS_DIR / DTRAIN_CA); no client certificate is needed.",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var service = new Option<string>("--service", "-s")
        {
            Description = "Health service to ask: \"\" (default) = the server is up; dtrain.jobs.v1.Jobs = the coordinator accepts jobs; " +
                          "dtrain.worker.v1.WorkerControl = the worker is registered and not draining.",
            DefaultValueFactory = _ => ServerHealth.Live,
        };
        var timeout = new Option<double>("--timeout") { Description = "Seconds to wait for the answer.", DefaultValueFactory = _ => 5 };
        var cmd = new Command("health", "Check a coordinator's or worker's gRPC health: prints the status; exit 0 when SERVING, 1 otherwise.");
        cmd.Arguments.Add(address);
        cmd.Options.Add(service);
        cmd.Options.Add(timeout);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var (fileAddress, fileCa) = FromAddressFile();
            var given = r.GetValue(address);
            var target = given ?? fileAddress ?? Remote.Address(r);
            if (!Uri.TryCreate(target, UriKind.Absolute, out var uri) || (uri.Scheme != "http" && uri.Scheme != "https"))
                throw new ArgumentException($"address \"{target}\" must be an http(s) URL, e.g. http://127.0.0.1:5000");
            var seconds = r.GetValue(timeout);
            if (!(seconds > 0)) throw new ArgumentException($"--timeout {seconds} must be positive");
            var name = r.GetValue(service) ?? ServerHealth.Live;
            // A coordinator or a worker: any certificate of the cluster for the host dialled. In a container probing
            // itself, the server's own CA bundle (from the address file) checks it when the CLI is given none.
            var tls = CliTls.Current;
            if (given is null && fileAddress is not null && fileCa is not null && !tls.HasMaterial) tls = new TlsSettings { Ca = fileCa };
            using var channel = CliTls.Channel(target, ExpectedPeer.AnyMember, tls);
            try
            {
                var reply = new Health.HealthClient(channel).Check(new HealthCheckRequest { Service = name }, deadline: DateTime.UtcNow.AddSeconds(seconds));
                var status = reply.Status;
                Console.WriteLine($"{target}{(name == "" ? "" : $" {name}")}: {status.ToString().ToUpperInvariant()}");
                return status == HealthCheckResponse.Types.ServingStatus.Serving ? CliErrors.Ok : CliErrors.Failed;
            }
            catch (RpcException e)
            {
                Console.WriteLine($"{target}{(name == "" ? "" : $" {name}")}: {(e.StatusCode == StatusCode.NotFound ? "UNKNOWN SERVICE" : $"UNREACHABLE ({e.StatusCode}: {e.Status.Detail})")}");
                return CliErrors.Failed;
            }
        }));
        return cmd;
    }

    /// <summary>The address a server wrote (first line) and, for a TLS server, its CA bundle (a "ca=PATH" line).</summary>
    private static (string? Address, string? Ca) FromAddressFile()
    {
        var file = Environment.GetEnvironmentVariable(GrpcServerHost.AddressFileVariable);
        if (string.IsNullOrEmpty(file) || !File.Exists(file)) return (null, null);
        var lines = File.ReadAllLines(file).Select(l => l.Trim()).Where(l => l.Length > 0).ToList();
        if (lines.Count == 0) return (null, null);
        var ca = lines.Skip(1).FirstOrDefault(l => l.StartsWith(GrpcServerHost.AddressFileCaPrefix, StringComparison.Ordinal))?[GrpcServerHost.AddressFileCaPrefix.Length..];
        return (lines[0], ca);
    }
}
