using System.CommandLine;
using Dtrain.Rpc;
using Grpc.Net.Client;

namespace Dtrain.Cli;

/// <summary>
/// TLS of the command line: --tls-dir, --ca, --cert, --key on every verb (environment DTRAIN_TLS_DIR, DTRAIN_CA,
/// DTRAIN_CERT, DTRAIN_KEY), used for https:// addresses; `serve` and `worker` take the same options for their own
/// certificates. Every CLI channel is made here (through <see cref="Channels"/>).
/// </summary>
public static class CliTls
{
    public static readonly Option<string?> Dir = new("--tls-dir")
    {
        Description = "TLS: a directory with ca.crt (the cluster CA) and tls.crt, tls.key (this party's certificate and key), e.g. DIR/client of " +
                      "`dtrain certs init DIR` (CLI default: $DTRAIN_TLS_DIR). With serve and worker: their own certificates (DIR/coordinator, DIR/worker; " +
                      "else Coordinator:Tls:Dir / Worker:Tls:Dir); with serve-model: the certificate it serves HTTPS and gRPC with.",
        Recursive = true,
    };

    public static readonly Option<string?> Ca = new("--ca") { Description = "TLS: the cluster CA certificate(s), PEM (default: ca.crt in --tls-dir; CLI: $DTRAIN_CA).", Recursive = true };
    public static readonly Option<string?> Cert = new("--cert") { Description = "TLS: this party's certificate, PEM (default: tls.crt in --tls-dir; CLI: $DTRAIN_CERT).", Recursive = true };
    public static readonly Option<string?> Key = new("--key") { Description = "TLS: this party's private key, PEM (default: tls.key in --tls-dir; CLI: $DTRAIN_KEY).", Recursive = true };

    private static TlsSettings? commandLine;

    public static void AddTo(Command root)
    {
        foreach (var o in new[] { Dir, Ca, Cert, Key }) root.Options.Add(o);
    }

    /// <summary>Remembers the TLS options of this invocation for the channels verbs make (call once, after parsing).</summary>
    public static void Capture(ParseResult parsed) => commandLine = CommandLine(parsed);

    /// <summary>The TLS options given on the command line (for serve and worker, over their configuration).</summary>
    public static TlsSettings CommandLine(ParseResult parsed) => new()
    {
        Dir = parsed.GetValue(Dir),
        Ca = parsed.GetValue(Ca),
        Cert = parsed.GetValue(Cert),
        Key = parsed.GetValue(Key),
    };

    /// <summary>The CLI's TLS settings: the command line over DTRAIN_TLS_DIR, DTRAIN_CA, DTRAIN_CERT, DTRAIN_KEY.</summary>
    public static TlsSettings Current => FromEnvironment().Over(commandLine);

    public static TlsSettings FromEnvironment() => new()
    {
        Dir = Environment.GetEnvironmentVariable("DTRAIN_TLS_DIR"),
        Ca = Environment.GetEnvironmentVariable("DTRAIN_CA"),
        Cert = Environment.GetEnvironmentVariable("DTRAIN_CERT"),
        Key = Environment.GetEnvironmentVariable("DTRAIN_KEY"),
    };

    /// <summary>
    /// A channel to <paramref name="address"/> for a CLI verb: for https, checked against the cluster CA of
    /// <paramref name="settings"/> (default <see cref="Current"/>) as <paramref name="expected"/> (default: the
    /// coordinator), presenting the client certificate; warns once if the server runs with --insecure.
    /// </summary>
    public static GrpcChannel Channel(string address, ExpectedPeer? expected = null, TlsSettings? settings = null)
    {
        var https = Uri.TryCreate(address, UriKind.Absolute, out var uri) && uri.Scheme == Uri.UriSchemeHttps;
        settings ??= Current;
        var tls = https && settings.HasMaterial
            ? settings.Load("TLS (--tls-dir, --ca, --cert, --key; DTRAIN_TLS_DIR, DTRAIN_CA, DTRAIN_CERT, DTRAIN_KEY)", CertificateNeed.Optional)
            : null;
        return Channels.Create(address, tls, expected ?? ExpectedPeer.Coordinator, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 256 * 1024 * 1024,
            MaxSendMessageSize = 256 * 1024 * 1024,
        }, warnInsecure: true);
    }
}
