using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;
using Grpc.Net.Client;

namespace Dtrain.Rpc;

/// <summary>
/// The one place every gRPC channel is made (CLI → coordinator, worker → coordinator, coordinator → worker, worker →
/// worker for the ring and pipeline stages). An <c>https://</c> address gets TLS: the server's certificate is checked
/// against the cluster CA (<see cref="ClusterTls.Authorities"/>) and must be the <see cref="ExpectedPeer"/> (role,
/// pinned certificate, host name), and this process's own certificate is presented as the client certificate.
/// An <c>http://</c> address is plaintext. A scheme that does not match the server, or a server certificate that is
/// refused, fails the call with FailedPrecondition and a message that says what to do.
/// </summary>
public static class Channels
{
    /// <summary>Header a server listening beyond loopback without TLS (--insecure) adds to every response.</summary>
    public const string InsecureHeader = "dtrain-insecure";

    private static int warnedInsecure;

    /// <param name="address">http(s)://host:port.</param>
    /// <param name="tls">The cluster CA and this process's certificate; null = the system's trust store, no client certificate.</param>
    /// <param name="expected">Whom the server certificate must belong to.</param>
    /// <param name="options">Message limits and the like (its HttpHandler is set here).</param>
    /// <param name="http2">Windows, keep-alive and connect timeout (<see cref="Http2Settings.Default"/> when null).</param>
    /// <param name="warnInsecure">Print a warning once per process when the server runs with --insecure (the CLI).</param>
    public static GrpcChannel Create(string address, ClusterTls? tls, ExpectedPeer expected, GrpcChannelOptions? options = null,
        Http2Settings? http2 = null, bool warnInsecure = false)
    {
        ArgumentNullException.ThrowIfNull(expected);
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"address \"{address}\" must be an http(s) URL, e.g. https://127.0.0.1:5000");
        var handler = new SocketsHttpHandler();
        (http2 ?? Http2Settings.Default).ApplyTo(handler);
        var state = new CheckState();
        if (uri.Scheme == Uri.UriSchemeHttps)
        {
            var own = tls?.Certificate;
            handler.SslOptions = new SslClientAuthenticationOptions
            {
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                ClientCertificates = own is null ? null : new X509CertificateCollection { own },
                LocalCertificateSelectionCallback = own is null ? null : (_, _, _, _, _) => own,
                RemoteCertificateValidationCallback = (_, certificate, _, errors) => Check(uri, tls, expected, certificate, errors, state),
            };
        }
        options ??= new GrpcChannelOptions();
        options.HttpHandler = new ExplainingHandler(handler, uri, tls, state, warnInsecure);
        options.DisposeHttpClient = true;
        return GrpcChannel.ForAddress(uri, options);
    }

    private sealed class CheckState
    {
        public volatile string? Refusal;
    }

    private static bool Check(Uri uri, ClusterTls? tls, ExpectedPeer expected, X509Certificate? certificate, SslPolicyErrors errors, CheckState state)
    {
        string? refusal;
        if (certificate is null)
        {
            refusal = $"the server at {uri.Authority} presented no certificate";
        }
        else if (tls is null)
        {
            // No cluster CA given: the system's trust store and the host name decide.
            refusal = errors == SslPolicyErrors.None ? null
                : $"the certificate of {uri.Authority} (\"{certificate.Subject}\") is not trusted ({errors}): give the cluster CA (--tls-dir DIR or --ca FILE; DTRAIN_TLS_DIR or DTRAIN_CA for the CLI)";
        }
        else
        {
            var presented = certificate as X509Certificate2 ?? X509CertificateLoader.LoadCertificate(certificate.GetRawCertData());
            var identity = tls.Identify(presented, asServer: true, out var error);
            if (identity is null) refusal = $"the server at {uri.Authority}: {error}";
            else if (expected.Mismatch(identity) is { } mismatch) refusal = $"the server at {uri.Authority} is not the one expected: {mismatch}";
            else if (expected.CheckHostName && (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
                refusal = $"the certificate of {uri.Authority} ({identity}) does not name the host \"{uri.Host}\" (it names {string.Join(", ", ClusterCertificates.Hosts(presented).DefaultIfEmpty("no host"))}): " +
                          "dial a name it holds, or issue it with that name (`dtrain certs init/issue --host`)";
            else refusal = null;
        }
        state.Refusal = refusal;
        return refusal is null;
    }

    /// <summary>Turns connection failures whose cause is the TLS set-up into one clear RpcException (FailedPrecondition), and warns about --insecure servers.</summary>
    private sealed class ExplainingHandler(HttpMessageHandler inner, Uri uri, ClusterTls? tls, CheckState state, bool warnInsecure) : DelegatingHandler(inner)
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            HttpResponseMessage response;
            try
            {
                response = await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException e) when (!cancellationToken.IsCancellationRequested && e.HttpRequestError is not (HttpRequestError.ConnectionError or HttpRequestError.NameResolutionError))
            {
                if (await ExplainAsync(e, cancellationToken).ConfigureAwait(false) is { } why) throw new RpcException(new Status(StatusCode.FailedPrecondition, why, e));
                throw;
            }
            if (warnInsecure && response.Headers.TryGetValues(InsecureHeader, out var values) && Interlocked.Exchange(ref warnedInsecure, 1) == 0)
                Console.Error.WriteLine($"warning: {uri.GetLeftPart(UriPartial.Authority)}: {values.FirstOrDefault()}");
            return response;
        }

        private async Task<string?> ExplainAsync(HttpRequestException e, CancellationToken cancel)
        {
            var at = uri.GetLeftPart(UriPartial.Authority);
            if (uri.Scheme == Uri.UriSchemeHttps)
            {
                if (state.Refusal is { } refusal) return $"TLS: {refusal}";
                if (e.InnerException is AuthenticationException or IOException && await SpeaksTlsAsync(uri, cancel).ConfigureAwait(false) == false)
                    return $"the server at {at} does not speak TLS (it serves plaintext, on loopback or with --insecure): use http://{uri.Authority}";
                return null;
            }
            if (await SpeaksTlsAsync(uri, cancel).ConfigureAwait(false) == true)
                return $"the server at {at} speaks TLS: use https://{uri.Authority}" +
                       (tls is null ? ", with the cluster CA and a client certificate (--tls-dir DIR, or DTRAIN_TLS_DIR=DIR; DIR/client from `dtrain certs init`)" : "");
            return null;
        }
    }

    /// <summary>How long <see cref="SpeaksTlsAsync"/> tries to connect and handshake before it says "cannot be reached" (null) or "not TLS" (false).</summary>
    public static readonly TimeSpan TlsProbeTimeout = TimeSpan.FromSeconds(3);

    /// <summary>
    /// Whether something at the address completes a TLS handshake (true), answers but not with TLS (false), or cannot be
    /// reached (null), within <paramref name="probeTimeout"/> (default <see cref="TlsProbeTimeout"/>).
    /// </summary>
    public static async Task<bool?> SpeaksTlsAsync(Uri uri, CancellationToken cancel, TimeSpan? probeTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(uri);
        var wait = probeTimeout ?? TlsProbeTimeout;
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(wait, TimeSpan.Zero, nameof(probeTimeout));
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        timeout.CancelAfter(wait);
        using var tcp = new TcpClient();
        try
        {
            await tcp.ConnectAsync(uri.Host, uri.Port, timeout.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            return null;
        }
        await using var ssl = new SslStream(tcp.GetStream(), leaveInnerStreamOpen: false);
        try
        {
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = IPAddress.TryParse(uri.Host, out _) ? "" : uri.Host,
                RemoteCertificateValidationCallback = (_, _, _, _) => true,
                ApplicationProtocols = [SslApplicationProtocol.Http2],
            }, timeout.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is AuthenticationException or IOException or OperationCanceledException)
        {
            return false;
        }
    }
}
