using System.CommandLine;
using System.Net;
using System.Text.Json;
using Dtrain.Server.Auth;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Dtrain.Cli;

/// <summary>
/// The bearer token the CLI sends to a coordinator (metadata "authorization: Bearer TOKEN"), from the first of:
/// --token-file FILE, $DTRAIN_TOKEN, $DTRAIN_TOKEN_FILE, the config file ($XDG_CONFIG_HOME or ~/.config,
/// then dtrain/config.json: {"token": "..."}). Files holding a token must not be accessible by group or others
/// (chmod 600), as ssh demands of a private key.
/// </summary>
public static class Credentials
{
    public const string TokenVariable = "DTRAIN_TOKEN";
    public const string TokenFileVariable = "DTRAIN_TOKEN_FILE";

    public static readonly Option<string?> TokenFileOption = new("--token-file")
    {
        Description = "File holding the coordinator token, mode 0600 (default: $DTRAIN_TOKEN, $DTRAIN_TOKEN_FILE, then \"token\" in ~/.config/dtrain/config.json, or $XDG_CONFIG_HOME/dtrain/config.json when set). With serve-model: the only place its token comes from, the bearer token its clients must send.",
        Recursive = true,
    };

    /// <summary>
    /// --insecure, on every verb: plaintext beyond loopback, on purpose. A verb that talks to a coordinator sends its token
    /// over plain http:// to a host beyond loopback only with it (anyone on the path could read the token and act as its
    /// holder); `serve` and `worker` listen beyond loopback without TLS only with it.
    /// </summary>
    public static readonly Option<bool> InsecureOption = new("--insecure")
    {
        Description = "Plaintext beyond loopback, on purpose. CLI verbs: send the token over plain http:// to a coordinator beyond loopback (refused without it: anyone on the network path can read the token). " +
                      "serve, worker, serve-model: listen beyond loopback WITHOUT TLS or authentication (anyone who reaches the port controls it; logged as a warning).",
        Recursive = true,
    };

    /// <summary>A token and where it came from (for messages; never the token itself).</summary>
    public sealed record Token(string Value, string Source);

    /// <summary>$XDG_CONFIG_HOME/dtrain/config.json, or ~/.config/dtrain/config.json.</summary>
    public static string ConfigPath()
    {
        var root = Environment.GetEnvironmentVariable("XDG_CONFIG_HOME") is { Length: > 0 } xdg
            ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config");
        return Path.Combine(root, "dtrain", "config.json");
    }

    /// <summary>The token to send, or null when none is configured; ArgumentException (exit 2) for an unusable file.</summary>
    public static Token? Resolve(ParseResult r)
    {
        if (r.GetValue(TokenFileOption) is { Length: > 0 } file) return FromFile(file, "--token-file");
        if (Environment.GetEnvironmentVariable(TokenVariable) is { Length: > 0 } value) return new(Checked(value.Trim(), "$" + TokenVariable), "$" + TokenVariable);
        if (Environment.GetEnvironmentVariable(TokenFileVariable) is { Length: > 0 } envFile) return FromFile(envFile, "$" + TokenFileVariable);
        var config = ConfigPath();
        return File.Exists(config) ? FromConfig(config) : null;
    }

    internal static Token FromFile(string path, string how)
    {
        path = Path.GetFullPath(path);
        if (Directory.Exists(path)) throw new ArgumentException($"token file {path} ({how}) is a directory; give the file that holds the token");
        if (!File.Exists(path)) throw new FileNotFoundException($"token file {path} ({how}) not found", path);
        SecureFiles.RequirePrivate(path, "token file");
        var value = File.ReadLines(path).Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0)
                    ?? throw new ArgumentException($"token file {path} ({how}) is empty");
        return new(Checked(value, $"token file {path}"), $"token file {path}");
    }

    static Token? FromConfig(string path)
    {
        SecureFiles.RequirePrivate(path, "config file");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"config file {path} is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ArgumentException($"config file {path}: $ must be an object such as {{\"token\": \"dtr_...\"}}");
            string? token = null;
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name != "token") throw new ArgumentException($"config file {path}: unknown field $.{p.Name} (allowed: token)");
                if (p.Value.ValueKind != JsonValueKind.String) throw new ArgumentException($"config file {path}: $.token must be a string");
                token = p.Value.GetString()!.Trim();
            }
            return string.IsNullOrEmpty(token) ? null : new(Checked(token, $"config file {path}"), $"config file {path}");
        }
    }

    static string Checked(string token, string source) =>
        token.Length > 0 && token.All(c => c is > ' ' and < (char)127)
            ? token
            : throw new ArgumentException($"the token in {source} contains spaces or characters outside printable ASCII");

    /// <summary>
    /// Calls through <paramref name="channel"/> carrying <paramref name="token"/> (none when null). A token is not sent in
    /// plaintext (http://) to a host beyond loopback unless <paramref name="insecure"/> (--insecure): ArgumentException
    /// (exit status 2) naming the address; with --insecure it is sent with a warning.
    /// </summary>
    public static CallInvoker Attach(ChannelBase channel, Token? token, string address, bool insecure = false)
    {
        if (token is null) return channel.CreateCallInvoker();
        if (Uri.TryCreate(address, UriKind.Absolute, out var uri) && uri.Scheme == "http" && !IsLoopback(uri.Host))
        {
            if (!insecure)
                throw new ArgumentException($"refusing to send the token from {token.Source} unencrypted to {address} (http:// beyond loopback: anyone on the network path could read it and act as its holder); " +
                                            "use the coordinator's https:// address (TLS), or pass --insecure to send it anyway on a network you trust");
            Console.Error.WriteLine($"warning: sending the token from {token.Source} unencrypted to {address} (--insecure); use https:// (TLS) beyond a trusted network");
        }
        var header = "Bearer " + token.Value;
        return channel.Intercept(metadata =>
        {
            metadata.Add("authorization", header);
            return metadata;
        });
    }

    static bool IsLoopback(string host) => host == "localhost" || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    /// <summary>The one line printed when the coordinator answers Unauthenticated.</summary>
    public static string Explain(string address, Token? token, string detail) => token is null
        ? $"coordinator {address} requires a token: set {TokenVariable}, pass --token-file FILE, or put {{\"token\": \"...\"}} in {ConfigPath()} (coordinator: {detail})"
        : $"coordinator {address} refused the token from {token.Source}: {detail}";
}
