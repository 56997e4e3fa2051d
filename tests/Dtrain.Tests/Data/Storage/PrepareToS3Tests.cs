using System.Security.Cryptography;
using Dtrain.Data.Datasets;
using Dtrain.Data.Storage;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Storage;

/// <summary>
/// `dtrain prepare -o s3://bucket/prefix` as a real process against the real S3 test server: the dataset read back from
/// the store holds the ids of the same preparation to a directory, its manifest was put after every other file, a
/// prefix that holds objects is refused without --force, and --force replaces the old dataset (its manifest deleted
/// before anything new is put, its stale shards deleted, the new manifest put last).
/// </summary>
public sealed class PrepareToS3Tests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static Dictionary<string, string?> Environment(S3TestServer server, string cache) => new()
    {
        ["DTRAIN_S3_ENDPOINT"] = server.Endpoint.ToString(), ["AWS_REGION"] = "us-east-1",
        ["AWS_ACCESS_KEY_ID"] = server.AccessKey, ["AWS_SECRET_ACCESS_KEY"] = server.SecretKey,
        ["DTRAIN_S3_CACHE_DIR"] = cache, ["DTRAIN_S3_MAX_ATTEMPTS"] = "2",
    };

    static string Sha256(byte[] bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>The request lines of the server's log for objects under <paramref name="prefix"/>, in the order answered.</summary>
    static List<string> Requests(S3TestServer server, string prefix) =>
        server.Log.Where(l => l.StartsWith("s3-server: ", StringComparison.Ordinal) && l.Contains($"/{server.Bucket}/{prefix}", StringComparison.Ordinal)).ToList();

    [S3Fact]
    public async Task Prepare_to_s3_uploads_the_ids_of_a_local_prepare_manifest_last_and_replaces_only_with_force()
    {
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var env = Environment(server, Path.Combine(dir.Path, "cli-cache"));
        var moby = dir.Write("moby.txt", File.ReadAllText(RepoFiles.PathOf("data", "moby-dick", "moby-dick.txt"))[..60_000]);
        var uri = $"s3://{server.Bucket}/datasets/moby";

        var local = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), env, "prepare", moby, "-o", "local", "--shard-tokens", "20000");
        Assert.True(local.ExitCode == 0, local.ToString());
        var r = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), env, "prepare", moby, "-o", uri, "--shard-tokens", "20000");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(uri, r.Stdout.Trim());

        using (var expected = PreparedDataset.Open(Path.Combine(dir.Path, "local")))
        using (var fromS3 = await StoredDataset.OpenAsync(uri, s3: server.Options(Path.Combine(dir.Path, "read-cache-1"))))
        {
            Assert.Equal(Sha256(File.ReadAllBytes(Path.Combine(dir.Path, "local", "manifest.json"))), fromS3.ManifestSha256);
            Assert.True(fromS3.Manifest.Train.Shards.Count > 1, "several shards");
            Assert.Equal(expected.Train.ReadAllTokens(), fromS3.Train.ReadAllTokens());
            Assert.Equal(expected.Validation.ReadAllTokens(), fromS3.Validation.ReadAllTokens());
        }
        await server.FlushLogAsync();
        var puts = Requests(server, "datasets/moby/").Where(l => l.Contains("s3-server: PUT ", StringComparison.Ordinal)).ToList();
        Assert.True(puts.Count == Directory.GetFiles(Path.Combine(dir.Path, "local")).Length, string.Join('\n', puts));
        Assert.Contains("/manifest.json", puts[^1]);

        // Objects at the prefix: refused without --force, before preparing, and left as they were.
        var before = Requests(server, "datasets/moby/").Count;
        r = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), env, "prepare", moby, "-o", uri);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains($"--output {uri}: holds", r.Stderr);
        Assert.Contains("--force", r.Stderr);
        Assert.DoesNotContain("pass 1/", r.Stderr);
        await server.FlushLogAsync();
        Assert.DoesNotContain(Requests(server, "datasets/moby/").Skip(before), l => l.Contains(" PUT ", StringComparison.Ordinal) || l.Contains(" DELETE ", StringComparison.Ordinal));

        // --force: another dataset (the word tokenizer, one shard) replaces it; the old shards are gone.
        before = Requests(server, "datasets/moby/").Count;
        local = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), env, "prepare", moby, "-o", "local2", "--tokenizer", "word");
        Assert.True(local.ExitCode == 0, local.ToString());
        r = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), env, "prepare", moby, "-o", uri, "--tokenizer", "word", "--force");
        Assert.True(r.ExitCode == 0, r.ToString());
        await server.FlushLogAsync();
        var writes = Requests(server, "datasets/moby/").Skip(before).Where(l => l.Contains(" PUT ", StringComparison.Ordinal) || l.Contains(" DELETE ", StringComparison.Ordinal)).ToList();
        Assert.True(writes[0].Contains(" DELETE ", StringComparison.Ordinal) && writes[0].Contains("/manifest.json", StringComparison.Ordinal), string.Join('\n', writes));
        Assert.True(writes[^1].Contains(" PUT ", StringComparison.Ordinal) && writes[^1].Contains("/manifest.json", StringComparison.Ordinal), string.Join('\n', writes));
        using (var store = new S3DatasetStore(uri, server.Options(Path.Combine(dir.Path, "list-cache"))))
            Assert.Equal(Directory.GetFiles(Path.Combine(dir.Path, "local2")).Select(Path.GetFileName).Order(StringComparer.Ordinal), (await store.ListAsync()).Select(f => f.Name));
        using (var expected = PreparedDataset.Open(Path.Combine(dir.Path, "local2")))
        using (var fromS3 = await StoredDataset.OpenAsync(uri, s3: server.Options(Path.Combine(dir.Path, "read-cache-2"))))
        {
            Assert.Equal("word", fromS3.Manifest.Settings.Tokenizer.Kind);
            Assert.Equal(expected.Train.ReadAllTokens(), fromS3.Train.ReadAllTokens());
        }
    }

    [S3Fact]
    public async Task Prepare_to_an_unreachable_or_refusing_s3_fails_naming_the_uri_and_leaves_nothing()
    {
        using var server = await S3TestServer.StartAsync(Path.Combine(dir.Path, "s3"));
        var text = dir.Write("t.txt", "some text to prepare, long enough to be a dataset");
        var uri = $"s3://{server.Bucket}/wrong";
        var env = Environment(server, Path.Combine(dir.Path, "cache"));
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret";
        var r = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), env, "prepare", text, "-o", uri);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains(uri, r.Stderr);
        Assert.Contains("access refused", r.Stderr);
        using var store = new S3DatasetStore(uri, server.Options(Path.Combine(dir.Path, "list-cache")));
        Assert.Empty(await store.ListAsync());

        // No endpoint and no region anywhere: said in dtrain's words, naming the URI, not the SDK's bare message.
        var none = new Dictionary<string, string?>
        {
            ["DTRAIN_S3_ENDPOINT"] = null, ["AWS_ENDPOINT_URL_S3"] = null, ["AWS_ENDPOINT_URL"] = null, ["AWS_REGION"] = null, ["AWS_DEFAULT_REGION"] = null,
            ["AWS_PROFILE"] = null, ["AWS_CONFIG_FILE"] = Path.Combine(dir.Path, "no-aws-config"), ["AWS_SHARED_CREDENTIALS_FILE"] = Path.Combine(dir.Path, "no-aws-credentials"),
            ["AWS_EC2_METADATA_DISABLED"] = "true", ["DTRAIN_S3_CACHE_DIR"] = Path.Combine(dir.Path, "cache"),
        };
        r = CliRunner.Run(dir.Path, TimeSpan.FromMinutes(3), none, "prepare", text, "-o", "s3://some-bucket/x");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("s3://some-bucket/x: no S3 endpoint or region: set DTRAIN_S3_ENDPOINT", r.Stderr);
    }
}
