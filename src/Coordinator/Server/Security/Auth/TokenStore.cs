using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Dtrain.Server.Auth;

/// <summary>One bearer token as stored: only the SHA-256 of its secret is kept; revoked tokens stay listed.</summary>
public sealed record TokenEntry
{
    public required string Id { get; init; }
    public required string Name { get; init; }
    public required string Role { get; init; }
    public required string Sha256 { get; init; }
    public required DateTimeOffset Created { get; init; }
    public DateTimeOffset? Revoked { get; init; }

    [JsonIgnore]
    public bool Active => Revoked is null;

    [JsonIgnore]
    public Role Parsed => Roles.TryParse(Role, out var r) ? r : throw new InvalidOperationException($"token {Id}: role \"{Role}\"");
}

/// <summary>The result of `dtrain tokens revoke`: what was revoked now, and what already was.</summary>
public sealed record RevokeResult(IReadOnlyList<TokenEntry> Revoked, IReadOnlyList<TokenEntry> AlreadyRevoked);

/// <summary>
/// DATA_DIR/tokens.json: the coordinator's tokens. Written by `dtrain tokens` (atomically, 0600, under a lock),
/// read by the coordinator (which re-reads it when it changes). A token is "dtr_" + 43 base64url characters
/// (256 random bits); only its SHA-256 is stored, and checks compare hashes in constant time.
/// </summary>
public static class TokenStore
{
    public const string FileName = "tokens.json";
    public const string Prefix = "dtr_";

    static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        RespectNullableAnnotations = true,
        WriteIndented = true,
        AllowTrailingCommas = true,
        ReadCommentHandling = JsonCommentHandling.Skip,
    };

    sealed record TokenFile
    {
        public required int Version { get; init; }
        public required List<TokenEntry> Tokens { get; init; }
    }

    public static string PathIn(string dataDir) => Path.Combine(Path.GetFullPath(dataDir), FileName);

    /// <summary>The tokens in <paramref name="path"/> ([] when the file does not exist); <see cref="InvalidDataException"/> naming the file when it is malformed or writable by others.</summary>
    public static IReadOnlyList<TokenEntry> Load(string path)
    {
        if (!File.Exists(path)) return [];
        SecureFiles.RequireNotWritableByOthers(path, "tokens file");
        TokenFile? file;
        try
        {
            file = JsonSerializer.Deserialize<TokenFile>(File.ReadAllBytes(path), Json);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"tokens file {path} is invalid: {e.Message}");
        }
        if (file is null) throw new InvalidDataException($"tokens file {path} is invalid: null instead of an object");
        if (file.Version != 1) throw new InvalidDataException($"tokens file {path}: $.version {file.Version} is not supported (1)");
        var ids = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < file.Tokens.Count; i++)
        {
            var t = file.Tokens[i];
            string? problem = null;
            if (!ids.Add(t.Id)) problem = $"id \"{t.Id}\" appears twice";
            else if (NameProblem(t.Name) is { } n) problem = $"name: {n}";
            else if (!Roles.TryParse(t.Role, out _)) problem = $"role \"{t.Role}\" must be {string.Join(", ", Roles.Names)}";
            else if (t.Sha256.Length != 64 || !t.Sha256.All(char.IsAsciiHexDigitLower)) problem = "sha256 must be 64 lowercase hex digits";
            if (problem is not null) throw new InvalidDataException($"tokens file {path}: $.tokens[{i}]: {problem}");
        }
        return file.Tokens;
    }

    /// <summary>Why <paramref name="name"/> is not a valid token name, or null.</summary>
    public static string? NameProblem(string name) =>
        name.Length is >= 1 and <= 64 && char.IsAsciiLetterOrDigit(name[0]) && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-' or '@')
            ? null
            : $"\"{name}\" must be 1-64 letters, digits or ._@- and start with a letter or digit";

    /// <summary>Creates a token; returns its entry and the secret, which is not stored and cannot be shown again.</summary>
    public static (TokenEntry Entry, string Secret) Create(string dataDir, string name, Role role, DateTimeOffset now)
    {
        if (NameProblem(name) is { } problem) throw new ArgumentException($"--name {problem}");
        return Modify(dataDir, tokens =>
        {
            string id;
            do id = "tok-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
            while (tokens.Any(t => t.Id == id));
            var secret = Prefix + Base64Url.EncodeToString(RandomNumberGenerator.GetBytes(32));
            var entry = new TokenEntry { Id = id, Name = name, Role = role.Name(), Sha256 = Hash(secret), Created = now };
            tokens.Add(entry);
            return (entry, secret);
        });
    }

    /// <summary>Revokes the token with id <paramref name="nameOrId"/>, or else every active token named so.</summary>
    public static RevokeResult Revoke(string dataDir, string nameOrId, DateTimeOffset now) => Modify(dataDir, tokens =>
    {
        var byId = tokens.FindIndex(t => t.Id == nameOrId);
        List<int> targets = byId >= 0 ? [byId] : Enumerable.Range(0, tokens.Count).Where(i => tokens[i].Name == nameOrId).ToList();
        if (targets.Count == 0)
            throw new ArgumentException($"no token with id or name \"{nameOrId}\" in {PathIn(dataDir)}; `dtrain tokens list` shows them");
        var revoked = new List<TokenEntry>();
        var already = new List<TokenEntry>();
        foreach (var i in targets)
        {
            if (!tokens[i].Active) { already.Add(tokens[i]); continue; }
            tokens[i] = tokens[i] with { Revoked = now };
            revoked.Add(tokens[i]);
        }
        return new RevokeResult(revoked, already);
    });

    /// <summary>SHA-256 of a token, lowercase hex.</summary>
    public static string Hash(string token) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(token)));

    /// <summary>The entry whose hash matches <paramref name="token"/> (active or revoked), comparing against every entry in constant time.</summary>
    public static TokenEntry? Match(IReadOnlyList<TokenEntry> tokens, string token)
    {
        Span<byte> presented = stackalloc byte[32];
        SHA256.HashData(Encoding.UTF8.GetBytes(token), presented);
        Span<byte> stored = stackalloc byte[32];
        TokenEntry? found = null;
        foreach (var t in tokens)
        {
            if (Convert.FromHexString(t.Sha256, stored, out _, out _) != System.Buffers.OperationStatus.Done) continue;
            if (CryptographicOperations.FixedTimeEquals(presented, stored)) found = t;
        }
        return found;
    }

    /// <summary>Reads, changes and atomically rewrites tokens.json under an exclusive lock (concurrent `dtrain tokens` calls wait for each other).</summary>
    static T Modify<T>(string dataDir, Func<List<TokenEntry>, T> change)
    {
        var path = PathIn(dataDir);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var _ = SecureFiles.Lock(path + ".lock", TimeSpan.FromSeconds(30));
        var tokens = Load(path).ToList();
        var result = change(tokens);
        SecureFiles.WriteAtomically(path, JsonSerializer.SerializeToUtf8Bytes(new TokenFile { Version = 1, Tokens = tokens }, Json));
        return result;
    }
}
