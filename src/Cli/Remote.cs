using System.CommandLine;
using Dtrain.Protos.Jobs;
using Grpc.Core;
using Grpc.Net.Client;

namespace Dtrain.Cli;

/// <summary>Talking to a coordinator: the shared --coordinator option and error handling of remote verbs.</summary>
public static class Remote
{
    public const string DefaultAddress = "http://127.0.0.1:5000";

    public static readonly Option<string?> CoordinatorOption = new("--coordinator", "-c")
    {
        Description = $"Coordinator URL (default: $DTRAIN_COORDINATOR, else {DefaultAddress}).",
        Recursive = true,
    };

    public static string Address(ParseResult r) =>
        r.GetValue(CoordinatorOption) ?? Environment.GetEnvironmentVariable("DTRAIN_COORDINATOR") ?? DefaultAddress;

    public static GrpcChannel Channel(string address) => CliTls.Channel(address);

    /// <summary>Runs a remote verb: a connection or server error becomes one clear line and an exit status.</summary>
    public static int Guard(ParseResult r, Func<Jobs.JobsClient, int> action) => CliErrors.Guard(() =>
    {
        var address = Address(r);
        var token = Credentials.Resolve(r);
        using var channel = Channel(address);
        try
        {
            return action(new Jobs.JobsClient(Credentials.Attach(channel, token, address, r.GetValue(Credentials.InsecureOption))));
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable)
        {
            CliErrors.Error($"coordinator {address} is unreachable ({e.Status.Detail}); start one with `dtrain serve` or `dtrain cluster up`, or pass --coordinator");
            return CliErrors.Failed;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Unauthenticated)
        {
            // Refused for its TLS client certificate (mTLS, before any token is looked at), or for its token.
            CliErrors.Error(e.Status.Detail.Contains("certificate", StringComparison.Ordinal)
                ? $"coordinator {address}: Unauthenticated: {e.Status.Detail}"
                : Credentials.Explain(address, token, e.Status.Detail));
            return CliErrors.Failed;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.PermissionDenied)
        {
            CliErrors.Error($"PermissionDenied: {e.Status.Detail}");
            return CliErrors.Failed;
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.InvalidArgument or StatusCode.NotFound or StatusCode.FailedPrecondition)
        {
            CliErrors.Error(e.Status.Detail);
            return CliErrors.BadInput;
        }
        catch (RpcException e)
        {
            CliErrors.Error($"{e.StatusCode}: {e.Status.Detail}");
            return CliErrors.Failed;
        }
    });
}
