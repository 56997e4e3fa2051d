using System.Net;
using System.Security.Authentication;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Rpc;

/// <summary>What the coordinator and worker servers share: how options are read, logging, HTTP/2-only Kestrel with the <see cref="Http2Settings"/>, gRPC limits and the interceptor.</summary>
public static class GrpcServerHost
{
    /// <summary>Options of <paramref name="section"/> from appsettings.json, DTRAIN_-prefixed environment variables (DTRAIN_Section__Key) and --Section:Key=value arguments, in that order.</summary>
    public static T ReadOptions<T>(string section, string[] args) where T : new()
    {
        var config = new ConfigurationBuilder()
            .AddJsonFile("appsettings.json", optional: true)
            .AddEnvironmentVariables("DTRAIN_")
            .AddCommandLine(args)
            .Build();
        return config.GetSection(section).Get<T>() ?? new T();
    }

    /// <summary>
    /// A builder listening on <paramref name="listen"/>:<paramref name="port"/> (HTTP/2 only) with gRPC messages bounded
    /// by <paramref name="maxMessageBytes"/>. With <paramref name="security"/>: TLS 1.2+ with the certificate it selects,
    /// client certificates requested, and every call admitted by <see cref="AccessInterceptor"/> first. Without it,
    /// plaintext; <paramref name="insecureWarning"/> (listening beyond loopback with --insecure) is then logged at start
    /// and sent to every client in the <see cref="Channels.InsecureHeader"/> response header.
    /// </summary>
    /// <param name="httpPort">
    /// A second listener on the same interface for HTTP/1.1 clients (browsers, Prometheus): null or -1 = none, 0 = any free
    /// port. It is TLS when <paramref name="security"/> is. gRPC is not served on it (gRPC needs HTTP/2); what it serves is
    /// mapped by the caller, restricted to it with <see cref="RequireHttpPort{T}"/>.
    /// </param>
    public static WebApplicationBuilder CreateBuilder(string listen, int port, int maxMessageBytes, Action<ILoggingBuilder>? logging,
        Action<KestrelServerOptions>? kestrel = null, bool detailedErrors = false, ServerSecurity? security = null, string? insecureWarning = null,
        int? httpPort = null)
    {
        var endpoints = new ServerEndpoints();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss "; });
        builder.Logging.SetMinimumLevel(LogLevel.Information);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Grpc", LogLevel.Warning);
        logging?.Invoke(builder.Logging);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Parse(listen), port, l =>
            {
                l.Protocols = HttpProtocols.Http2;
                if (security is not null) l.UseHttps(https => ConfigureHttps(https, security));
                endpoints.Grpc = l;
            });
            if (httpPort is >= 0 and var webPort)
                k.Listen(IPAddress.Parse(listen), webPort, l =>
                {
                    l.Protocols = HttpProtocols.Http1;
                    if (security is not null) l.UseHttps(https => ConfigureHttps(https, security));
                    endpoints.Http = l;
                    endpoints.HttpScheme = security is null ? "http" : "https";
                });
            Http2Settings.Default.ApplyTo(k);
            // Each gRPC message is bounded by maxMessageBytes below. Kestrel's own body limit would count a whole
            // stream, and it is checked as DATA frames arrive, before the gRPC handler can lift it: a large unary
            // request then raced the handler and was reset (the client saw Unknown instead of ResourceExhausted).
            k.Limits.MaxRequestBodySize = null;
            kestrel?.Invoke(k);
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = maxMessageBytes;
            o.MaxSendMessageSize = maxMessageBytes;
            o.EnableDetailedErrors = detailedErrors;
            if (security is not null) o.Interceptors.Add<AccessInterceptor>();
            o.Interceptors.Add<ServerInterceptor>();
        });
        if (security is not null)
        {
            builder.Services.AddSingleton(security);
            builder.Services.AddSingleton(security.Tls);
            builder.Services.AddSingleton(security.Policy);
        }
        builder.Services.AddSingleton(new ServerMode(security, insecureWarning));
        builder.Services.AddSingleton(endpoints);
        builder.Services.AddSingleton<ServerHealth>();
        builder.Services.AddSingleton(sp => sp.GetRequiredService<ServerHealth>().Service);
        return builder;
    }

    private static void ConfigureHttps(HttpsConnectionAdapterOptions https, ServerSecurity security)
    {
        https.SslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13;
        https.ServerCertificateSelector = (_, _) => security.SelectCertificate();
        // Requested, not required at the handshake: the AccessInterceptor identifies the certificate against the
        // cluster CA and refuses calls with a precise status and message (a failed handshake would say nothing).
        https.ClientCertificateMode = ClientCertificateMode.AllowCertificate;
        https.AllowAnyClientCertificate();
    }

    /// <summary>Environment variable naming a file the server writes its reachable address into once it listens (`dtrain health` reads it; the container image sets it).</summary>
    public const string AddressFileVariable = "DTRAIN_ADDRESS_FILE";

    /// <summary>The line of the address file naming the CA bundle of a TLS server (`dtrain health` checks the server with it).</summary>
    public const string AddressFileCaPrefix = "ca=";

    /// <summary>
    /// Maps the gRPC health service: liveness ("") SERVING once the server listens, everything NOT_SERVING once it
    /// stops; <paramref name="readiness"/> is left to the caller. Writes the address file when one is configured.
    /// </summary>
    public static void MapHealth(WebApplication app, string readiness)
    {
        app.MapGrpcService<Grpc.HealthCheck.HealthServiceImpl>();
        var health = app.Services.GetRequiredService<ServerHealth>();
        health.Set(readiness, false);
        var mode = app.Services.GetRequiredService<ServerMode>();
        if (mode.InsecureWarning is { } warning)
            app.Use((http, next) =>
            {
                http.Response.Headers[Channels.InsecureHeader] = warning;
                return next(http);
            });
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            health.Set(ServerHealth.Live, true);
            if (mode.InsecureWarning is { } w) app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Dtrain.Security").LogWarning("INSECURE: {Warning}", w);
            if (Environment.GetEnvironmentVariable(AddressFileVariable) is { Length: > 0 } file)
                File.WriteAllText(file, LocalAddress(app) + "\n" + (mode.Security is { } s ? $"{AddressFileCaPrefix}{Path.GetFullPath(s.Tls.AuthorityPath)}\n" : ""));
        });
        app.Lifetime.ApplicationStopping.Register(() => health.Stopping(readiness));
    }

    /// <summary>The http(s)://host:port a client on this machine reaches the started server on (a wildcard listen address becomes loopback).</summary>
    public static string LocalAddress(WebApplication app)
    {
        var bound = BoundAddress(app).ToString().TrimEnd('/');
        return bound.Replace("[::]", "127.0.0.1", StringComparison.Ordinal).Replace("0.0.0.0", "127.0.0.1", StringComparison.Ordinal);
    }

    /// <summary>
    /// The address the started server's gRPC listener is bound to (with the real port when 0 was asked for). A server
    /// not made by <see cref="CreateBuilder"/> (one listener, no <see cref="ServerEndpoints"/>) gives its first address.
    /// </summary>
    public static Uri BoundAddress(WebApplication app)
    {
        var grpcPort = app.Services.GetService<ServerEndpoints>()?.Grpc?.IPEndPoint?.Port;
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Select(a => new Uri(a)).ToList();
        return addresses.FirstOrDefault(a => a.Port == grpcPort) ?? addresses.First();
    }

    /// <summary>The http(s)://host:port a browser on this machine reaches the started server's HTTP/1.1 listener on; null when it has none.</summary>
    public static string? HttpAddress(WebApplication app)
    {
        var endpoints = app.Services.GetRequiredService<ServerEndpoints>();
        if (endpoints.Http?.IPEndPoint is not { } ep) return null;
        var host = IPAddress.Any.Equals(ep.Address) || IPAddress.IPv6Any.Equals(ep.Address) ? "127.0.0.1" : ep.Address.ToString();
        return $"{endpoints.HttpScheme}://{host}:{ep.Port}";
    }

    /// <summary>Serves <paramref name="endpoint"/> only on the HTTP/1.1 listener (not on the gRPC port).</summary>
    public static T RequireHttpPort<T>(T endpoint, WebApplication app) where T : IEndpointConventionBuilder
    {
        var endpoints = app.Services.GetRequiredService<ServerEndpoints>();
        endpoint.Add(b =>
        {
            var inner = b.RequestDelegate;
            if (inner is null) return;
            b.RequestDelegate = http =>
            {
                if (endpoints.Http?.IPEndPoint is { } ep && http.Connection.LocalPort == ep.Port) return inner(http);
                http.Response.StatusCode = StatusCodes.Status404NotFound;
                return Task.CompletedTask;
            };
        });
        return endpoint;
    }
}

/// <summary>The listeners of a server: gRPC (HTTP/2) and, when configured, HTTP/1.1 for browsers and scrapers. Ports are the bound ones once started.</summary>
public sealed class ServerEndpoints
{
    public ListenOptions? Grpc { get; internal set; }
    public ListenOptions? Http { get; internal set; }
    public string HttpScheme { get; internal set; } = "http";
}

/// <summary>How a server was built: TLS (and its admission rules) or plaintext, and the --insecure warning if any.</summary>
public sealed record ServerMode(ServerSecurity? Security, string? InsecureWarning);
