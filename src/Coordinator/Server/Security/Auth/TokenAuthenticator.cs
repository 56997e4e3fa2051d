using System.Globalization;
using System.Net;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server.Auth;

/// <summary>
/// Checks the bearer token of each Jobs call against DATA_DIR/tokens.json, re-read whenever the file changes (a
/// token created or revoked with `dtrain tokens` counts from the next call). Coordinator:Auth decides whether a
/// token is needed: on, off, or auto — needed when the coordinator listens beyond loopback or the file holds any
/// token; on loopback with no token ever created the API stays open (`dtrain cluster run`, the quickstart).
/// A streaming call (watch, download, upload) is held open under the token it was admitted with (<see cref="Hold"/>):
/// when the file changes (watched, and looked at every second while any stream is open) and that token is revoked or
/// gone — or the file is broken, which refuses every call — the stream ends.
/// </summary>
public sealed class TokenAuthenticator : IDisposable
{
    private readonly CoordinatorOptions options;
    private readonly AuditLog audit;
    private readonly TimeProvider clock;
    private readonly ILogger<TokenAuthenticator> log;
    private readonly Lock gate = new();
    private readonly Dictionary<string, DateTimeOffset> lastUse = [];
    private (bool Exists, DateTime Written, long Length) stamp = (false, default, -1);
    private IReadOnlyList<TokenEntry> tokens = [];
    private string? fileError;
    private bool? lastRequired;
    private readonly List<OpenStream> open = [];
    private FileSystemWatcher? watcher;
    private ITimer? poll;

    public TokenAuthenticator(CoordinatorOptions options, AuditLog audit, TimeProvider clock, ILogger<TokenAuthenticator> log)
    {
        this.options = options;
        this.audit = audit;
        this.clock = clock;
        this.log = log;
        TokensPath = TokenStore.PathIn(options.DataDir);
        BeyondLoopback = !(IPAddress.TryParse(options.Listen, out var ip) && IPAddress.IsLoopback(ip)) && options.Listen != "localhost";
    }

    public string TokensPath { get; }
    public bool BeyondLoopback { get; }

    /// <summary>What a call is checked against right now.</summary>
    public sealed record State(bool Required, string Why, IReadOnlyList<TokenEntry> Tokens, string? FileError);

    public State Current()
    {
        lock (gate)
        {
            Reload();
            var required = options.Auth switch
            {
                "on" => true,
                "off" => false,
                _ => BeyondLoopback || tokens.Count > 0 || fileError is not null,
            };
            var why = options.Auth switch
            {
                "on" or "off" => $"Coordinator:Auth={options.Auth}",
                _ when BeyondLoopback => $"Coordinator:Auth=auto, listening on {options.Listen}",
                _ when tokens.Count > 0 || fileError is not null => $"Coordinator:Auth=auto, {TokensPath} has tokens",
                _ => $"Coordinator:Auth=auto, listening on {options.Listen} only and no tokens created",
            };
            var state = new State(required, why, tokens, fileError);
            if (lastRequired is { } before && before != required) LogState(state, changed: true);
            lastRequired = required;
            return state;
        }
    }

    /// <summary>Logs whether auth is on and why, loudly when it is off; called once the server listens.</summary>
    public void LogStartup() => LogState(Current(), changed: false);

    void LogState(State s, bool changed)
    {
        var create = $"dtrain tokens create --role admin --name NAME --data-dir {Path.GetDirectoryName(TokensPath)}";
        var prefix = changed ? "auth changed: " : "";
        if (!s.Required)
        {
            log.LogWarning("{Prefix}AUTH IS OFF ({Why}): anyone who can connect to the coordinator can submit, read, cancel and download every job. " +
                           "Create a token to turn it on ({Create}), or set Coordinator:Auth=on", prefix, s.Why, create);
            return;
        }
        if (s.FileError is not null)
        {
            log.LogError("{Prefix}auth on ({Why}), but {Error}: every job call is refused until the file is fixed", prefix, s.Why, s.FileError);
            return;
        }
        var active = s.Tokens.Count(t => t.Active);
        if (active == 0)
            log.LogWarning("{Prefix}auth on ({Why}) and no active token exists: every job call is refused until one is created on this host: {Create}", prefix, s.Why, create);
        else
            log.LogInformation("{Prefix}auth on ({Why}): job calls need a bearer token; {Active} active token(s) in {Path}; audit log {Audit}", prefix, s.Why, active, TokensPath, audit.Path);
    }

    void Reload()
    {
        var info = new FileInfo(TokensPath);
        var now = (info.Exists, info.Exists ? info.LastWriteTimeUtc : default, info.Exists ? info.Length : -1);
        if (now == stamp) return;
        stamp = now;
        try
        {
            tokens = TokenStore.Load(TokensPath);
            fileError = null;
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            // Fail closed: a broken file refuses every call rather than falling back to an older set of tokens.
            tokens = [];
            fileError = e.Message;
            log.LogError("{Error}", e.Message);
        }
    }

    /// <summary>The caller of <paramref name="context"/>, or an <see cref="AccessDeniedException"/> that says what is wrong; failures are audited.</summary>
    public Caller Authenticate(ServerCallContext context) =>
        Authenticate(context.RequestHeaders.GetValue("authorization"), context.Peer, context.Method, "metadata");

    /// <summary>
    /// The caller who sent <paramref name="authorization"/> ("Bearer TOKEN", or null), or an <see cref="AccessDeniedException"/>
    /// (Unauthenticated; Internal when the tokens file is broken) that says what is wrong; failures are audited with <paramref name="peer"/> and <paramref name="method"/>. The
    /// dashboard checks its requests with this too (<paramref name="carrier"/> names where the token travels).
    /// </summary>
    public Caller Authenticate(string? authorization, string peer, string method, string carrier = "header")
    {
        var state = Current();
        if (!state.Required) return Caller.Open;
        if (state.FileError is not null)
            throw Fail(peer, method, RefusalKind.Internal, "tokens file invalid", $"the coordinator cannot check tokens: {state.FileError}");
        var header = authorization;
        if (string.IsNullOrEmpty(header))
        {
            var hint = state.Tokens.Any(t => t.Active) ? "" :
                // Said to a caller who has no token: the coordinator's own paths stay out of it (its log names the directory).
                "; no token exists yet: on the coordinator's host run `dtrain tokens create --role admin --name NAME --data-dir DIR`, DIR being the coordinator's data directory (Coordinator:DataDir)";
            throw Fail(peer, method, RefusalKind.Unauthenticated, "no token", $"this coordinator requires a bearer token ({carrier} \"authorization: Bearer TOKEN\") and none was sent{hint}");
        }
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) || header.Length <= 7)
            throw Fail(peer, method, RefusalKind.Unauthenticated, "malformed authorization", $"the authorization {carrier} must be \"Bearer TOKEN\"");
        var entry = TokenStore.Match(state.Tokens, header[7..].Trim());
        if (entry is null)
            throw Fail(peer, method, RefusalKind.Unauthenticated, "unknown token", "the token is not valid on this coordinator (unknown token)");
        if (!entry.Active)
            throw Fail(peer, method, RefusalKind.Unauthenticated, "revoked token",
                string.Create(CultureInfo.InvariantCulture, $"token {entry.Id} (\"{entry.Name}\") was revoked at {entry.Revoked:yyyy-MM-dd HH:mm:ss} UTC"), entry);
        var caller = new Caller(entry.Name, entry.Parsed, entry.Id);
        NoteUse(caller, peer, method);
        return caller;
    }

    /// <summary>A streaming call admitted with a token, held open until it ends or the token no longer admits it (<see cref="Ended"/>, <see cref="Reason"/>).</summary>
    public sealed class OpenStream : IDisposable
    {
        private readonly TokenAuthenticator owner;
        private readonly CancellationTokenSource ended = new();

        internal OpenStream(TokenAuthenticator owner, Caller caller, string method, string peer)
        {
            this.owner = owner;
            Caller = caller;
            Method = method;
            Peer = peer;
        }

        public Caller Caller { get; }
        public string Method { get; }
        public string Peer { get; }
        /// <summary>Cancelled when the token no longer admits the stream.</summary>
        public CancellationToken Ended => ended.Token;
        /// <summary>Why it ended ("token tok-… ("alice") was revoked at …"); null while it may go on.</summary>
        public string? Reason { get; internal set; }

        internal void End()
        {
            try
            {
                ended.Cancel();
            }
            catch (ObjectDisposedException)
            {
                // The stream ended by itself meanwhile.
            }
        }

        public void Dispose()
        {
            owner.Release(this);
            ended.Dispose();
        }
    }

    /// <summary>
    /// Holds a streaming call of <paramref name="caller"/> (an authenticated token) open: its <see cref="OpenStream.Ended"/>
    /// is cancelled once the token is revoked or removed, or tokens.json breaks. Dispose it when the call ends.
    /// </summary>
    public OpenStream Hold(Caller caller, string method, string peer)
    {
        var stream = new OpenStream(this, caller, method, peer);
        lock (gate)
        {
            open.Add(stream);
            if (watcher is null && Path.GetDirectoryName(TokensPath) is { } dir && Directory.Exists(dir))
            {
                try
                {
                    watcher = new FileSystemWatcher(dir, Path.GetFileName(TokensPath))
                    {
                        NotifyFilter = NotifyFilters.FileName | NotifyFilters.LastWrite | NotifyFilters.Size | NotifyFilters.CreationTime,
                    };
                    FileSystemEventHandler changed = (_, _) => CheckOpenStreams();
                    watcher.Changed += changed;
                    watcher.Created += changed;
                    watcher.Deleted += changed;
                    watcher.Renamed += (_, _) => CheckOpenStreams();
                    watcher.EnableRaisingEvents = true;
                }
                catch (Exception e) when (e is IOException or ArgumentException or PlatformNotSupportedException)
                {
                    // No file notifications here (e.g. out of inotify watches): the poll below still looks every second.
                    log.LogWarning("cannot watch {Path} for changes ({Message}); open streams are checked against it every second", TokensPath, e.Message);
                    watcher?.Dispose();
                    watcher = null;
                }
            }
            // A stat every second while streams are open, in case a change notification is missed (network filesystems).
            poll ??= TimeProvider.System.CreateTimer(_ => CheckOpenStreams(), null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
        }
        // A revocation between the call's token check and now.
        CheckOpenStreams();
        return stream;
    }

    void Release(OpenStream stream)
    {
        lock (gate)
        {
            open.Remove(stream);
            if (open.Count == 0)
            {
                poll?.Dispose();
                poll = null;
            }
        }
    }

    /// <summary>Ends the open streams whose token no longer admits calls (revoked, removed, or tokens.json broken).</summary>
    void CheckOpenStreams()
    {
        List<(OpenStream Stream, string Reason)> ending = [];
        State state;
        try
        {
            state = Current();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return;
        }
        lock (gate)
        {
            if (!state.Required) return;
            foreach (var s in open.Where(s => s.Reason is null).ToList())
            {
                var entry = state.Tokens.FirstOrDefault(t => t.Id == s.Caller.TokenId);
                var reason = state.FileError is not null ? $"the coordinator cannot check tokens: {state.FileError}"
                    : entry is null ? $"token {s.Caller.TokenId} (\"{s.Caller.Name}\") is no longer one of the coordinator's tokens (removed from its tokens file)"
                    : !entry.Active ? string.Create(CultureInfo.InvariantCulture, $"token {entry.Id} (\"{entry.Name}\") was revoked at {entry.Revoked:yyyy-MM-dd HH:mm:ss} UTC")
                    : null;
                if (reason is null) continue;
                s.Reason = reason;
                ending.Add((s, reason));
            }
        }
        foreach (var (s, reason) in ending)
        {
            audit.Write("stream.ended", s.Caller, s.Peer, ("method", s.Method), ("reason", reason));
            log.LogInformation("ending {Method} of {Caller} from {Peer}: {Reason}", s.Method, s.Caller, s.Peer, reason);
            s.End();
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            watcher?.Dispose();
            watcher = null;
            poll?.Dispose();
            poll = null;
        }
    }

    /// <summary>
    /// The holder of the valid, active token in <paramref name="authorization"/> ("Bearer TOKEN"), or null (none, malformed,
    /// unknown, revoked, or tokens not required): who a call is for per-client limits, with no audit line (the call's
    /// own check audits it).
    /// </summary>
    public Caller? Identify(string? authorization)
    {
        if (string.IsNullOrEmpty(authorization) || !authorization.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) || authorization.Length <= 7) return null;
        var state = Current();
        if (!state.Required || state.FileError is not null) return null;
        return TokenStore.Match(state.Tokens, authorization[7..].Trim()) is { Active: true } entry ? new Caller(entry.Name, entry.Parsed, entry.Id) : null;
    }

    AccessDeniedException Fail(string peer, string method, RefusalKind kind, string reason, string message, TokenEntry? entry = null)
    {
        var fields = new List<(string, object?)> { ("method", method), ("reason", reason) };
        if (entry is not null) { fields.Add(("token", entry.Id)); fields.Add(("name", entry.Name)); }
        audit.Write("auth.failed", null, peer, [.. fields]);
        return new AccessDeniedException(kind, message);
    }

    /// <summary>Audits a token's first use, and again once <see cref="CoordinatorOptions.AuditTokenUseMinutes"/> have passed since the last line.</summary>
    void NoteUse(Caller caller, string peer, string method)
    {
        var now = clock.GetUtcNow();
        lock (gate)
        {
            if (lastUse.TryGetValue(caller.TokenId, out var last) && options.AuditTokenUseMinutes > 0 && now - last < TimeSpan.FromMinutes(options.AuditTokenUseMinutes)) return;
            lastUse[caller.TokenId] = now;
        }
        audit.Write("token.use", caller, peer, ("method", method));
    }
}
