using System.Text.RegularExpressions;
using Dtrain.Server.Auth;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Security;

/// <summary>DATA_DIR/tokens.json: hashed secrets, owner-only, atomic and safe under concurrent writers.</summary>
public class AuthTokenStoreTests
{
    [Fact]
    public void Tokens_are_256_bit_secrets_stored_only_as_SHA256_in_an_owner_only_file()
    {
        using var tmp = new TempDir();
        var (a, secretA) = TokenStore.Create(tmp.Path, "alice", Role.Submitter, DateTimeOffset.UtcNow);
        var (b, secretB) = TokenStore.Create(tmp.Path, "bob", Role.Viewer, DateTimeOffset.UtcNow);
        Assert.Matches(new Regex("^dtr_[A-Za-z0-9_-]{43}$"), secretA);
        Assert.NotEqual(secretA, secretB);
        Assert.NotEqual(a.Id, b.Id);

        var path = TokenStore.PathIn(tmp.Path);
        var text = File.ReadAllText(path);
        Assert.DoesNotContain(secretA, text);
        Assert.DoesNotContain(secretA[4..], text);
        Assert.Contains(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(secretA))), text);
        Assert.Equal(SecureFiles.OwnerOnly, File.GetUnixFileMode(path));
        Assert.False(File.Exists(path + ".tmp"));

        var tokens = TokenStore.Load(path);
        Assert.Equal(a.Id, TokenStore.Match(tokens, secretA)!.Id);
        Assert.Equal(b.Id, TokenStore.Match(tokens, secretB)!.Id);
        Assert.Null(TokenStore.Match(tokens, secretA + "x"));
        Assert.Null(TokenStore.Match(tokens, ""));
    }

    [Fact]
    public async Task Concurrent_writers_lose_no_token()
    {
        using var tmp = new TempDir();
        var secrets = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => TokenStore.Create(tmp.Path, $"user{i}", Role.Submitter, DateTimeOffset.UtcNow).Secret)));
        var tokens = TokenStore.Load(TokenStore.PathIn(tmp.Path));
        Assert.Equal(8, tokens.Count);
        Assert.All(secrets, s => Assert.NotNull(TokenStore.Match(tokens, s)));
    }

    [Fact]
    public void Revoking_by_name_revokes_every_active_token_of_that_name_and_by_id_only_that_one()
    {
        using var tmp = new TempDir();
        var first = TokenStore.Create(tmp.Path, "alice", Role.Submitter, DateTimeOffset.UtcNow).Entry;
        var second = TokenStore.Create(tmp.Path, "alice", Role.Admin, DateTimeOffset.UtcNow).Entry;
        var other = TokenStore.Create(tmp.Path, "bob", Role.Viewer, DateTimeOffset.UtcNow).Entry;

        Assert.Equal([first.Id], TokenStore.Revoke(tmp.Path, first.Id, DateTimeOffset.UtcNow).Revoked.Select(t => t.Id));
        var byName = TokenStore.Revoke(tmp.Path, "alice", DateTimeOffset.UtcNow);
        Assert.Equal([second.Id], byName.Revoked.Select(t => t.Id));
        Assert.Equal([first.Id], byName.AlreadyRevoked.Select(t => t.Id));
        var tokens = TokenStore.Load(TokenStore.PathIn(tmp.Path));
        Assert.Equal([false, false, true], tokens.Select(t => t.Active));
        Assert.Equal(other.Id, tokens[2].Id);

        Assert.Contains("no token with id or name \"carol\"", Assert.Throws<ArgumentException>(() => TokenStore.Revoke(tmp.Path, "carol", DateTimeOffset.UtcNow)).Message);
        Assert.Contains("--name \"a b\" must be 1-64 letters", Assert.Throws<ArgumentException>(() => TokenStore.Create(tmp.Path, "a b", Role.Admin, DateTimeOffset.UtcNow)).Message);
    }

    [Fact]
    public void A_malformed_tokens_file_is_an_error_naming_the_file_and_the_field()
    {
        using var tmp = new TempDir();
        var path = TokenStore.PathIn(tmp.Path);
        File.WriteAllText(path, """{"version": 1, "tokens": [{"id": "tok-1", "name": "x", "role": "admin", "created": "2025-01-01T00:00:00Z"}]}""");
        Assert.Contains("sha256", Assert.Throws<InvalidDataException>(() => TokenStore.Load(path)).Message);
        File.WriteAllText(path, """{"version": 1, "tokens": [], "extra": true}""");
        var unknown = Assert.Throws<InvalidDataException>(() => TokenStore.Load(path)).Message;
        Assert.Contains(path, unknown);
        Assert.Contains("extra", unknown);
    }
}
