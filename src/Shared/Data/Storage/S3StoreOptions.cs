using System.Globalization;
using Amazon.Runtime;
using Amazon.S3;

namespace Dtrain.Data.Storage;

/// <summary>
/// How an <see cref="S3DatasetStore"/> reaches its server and caches what it reads. <see cref="FromEnvironment"/>
/// reads the usual AWS variables and dtrain's own (docs/storage.md "Object storage"):
/// <list type="bullet">
/// <item><c>DTRAIN_S3_ENDPOINT</c>, else <c>AWS_ENDPOINT_URL_S3</c>, else <c>AWS_ENDPOINT_URL</c>: an S3-compatible
/// server's URL (http://host:port); unset = AWS itself.</item>
/// <item><c>AWS_REGION</c> / <c>AWS_DEFAULT_REGION</c> (us-east-1 when an endpoint is set and neither is).</item>
/// <item><c>DTRAIN_S3_PATH_STYLE</c> 1/0: path-style addressing (http://host/bucket/key); default 1 with an endpoint, 0 without.</item>
/// <item>credentials: the SDK's chain (<c>AWS_ACCESS_KEY_ID</c>/<c>AWS_SECRET_ACCESS_KEY</c>/<c>AWS_SESSION_TOKEN</c>,
/// <c>AWS_PROFILE</c> in ~/.aws, web identity, the container or instance role).</item>
/// <item><c>DTRAIN_S3_CACHE_DIR</c> (default $XDG_CACHE_HOME/dtrain/s3, else ~/.cache/dtrain/s3), <c>DTRAIN_S3_CACHE_MB</c>
/// (2048; MB = 10^6 bytes), <c>DTRAIN_S3_MAX_ATTEMPTS</c> (5).</item>
/// </list>
/// </summary>
public sealed record S3StoreOptions
{
    public Uri? Endpoint { get; init; }
    public string? Region { get; init; }
    /// <summary>Null: path-style exactly when <see cref="Endpoint"/> is set.</summary>
    public bool? ForcePathStyle { get; init; }
    /// <summary>Null: the SDK's default credential chain.</summary>
    public AWSCredentials? Credentials { get; init; }
    public string CacheDirectory { get; init; } = DefaultCacheDirectory();
    public long CacheBytes { get; init; } = 2_048_000_000;
    /// <summary>
    /// Reads are made and cached in blocks of this size (the last block of a file is shorter): the block size a dataset's
    /// manifest records its block hashes for (<see cref="Datasets.DatasetLayout.BlockBytes"/>). A read given a file's
    /// block hashes uses their block size instead.
    /// </summary>
    public int BlockBytes { get; init; } = Datasets.DatasetLayout.BlockBytes;
    /// <summary>Blocks fetched in the background after the last one a read touched (0 = none).</summary>
    public int ReadAheadBlocks { get; init; } = 2;
    /// <summary>Files larger than this are uploaded in parts of this size (multipart upload); at least 5 MiB.</summary>
    public long PartBytes { get; init; } = 16 << 20;
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(60);
    public StoreRetryPolicy Retry { get; init; } = new();

    /// <summary>The options the environment gives (see the type's summary); a malformed value is an <see cref="ArgumentException"/> naming the variable.</summary>
    public static S3StoreOptions FromEnvironment(Func<string, string?>? read = null)
    {
        read ??= Environment.GetEnvironmentVariable;
        string? Get(string name) => read(name) is { Length: > 0 } v ? v.Trim() : null;
        Uri? endpoint = null;
        foreach (var name in new[] { "DTRAIN_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL" })
        {
            if (Get(name) is not { } value) continue;
            if (!Uri.TryCreate(value, UriKind.Absolute, out endpoint) || endpoint.Scheme is not ("http" or "https"))
                throw new ArgumentException($"{name}: \"{value}\" is not an http:// or https:// URL");
            break;
        }
        bool? pathStyle = Get("DTRAIN_S3_PATH_STYLE") switch
        {
            null => null,
            "1" or "true" => true,
            "0" or "false" => false,
            var v => throw new ArgumentException($"DTRAIN_S3_PATH_STYLE: \"{v}\" is not 1 or 0"),
        };
        var options = new S3StoreOptions
        {
            Endpoint = endpoint,
            Region = Get("AWS_REGION") ?? Get("AWS_DEFAULT_REGION"),
            ForcePathStyle = pathStyle,
        };
        if (Get("DTRAIN_S3_CACHE_DIR") is { } dir) options = options with { CacheDirectory = dir };
        if (Get("DTRAIN_S3_CACHE_MB") is { } mb)
            options = options with { CacheBytes = PositiveLong("DTRAIN_S3_CACHE_MB", mb) * 1_000_000 };
        if (Get("DTRAIN_S3_MAX_ATTEMPTS") is { } attempts)
            options = options with { Retry = options.Retry with { MaxAttempts = (int)Math.Min(100, PositiveLong("DTRAIN_S3_MAX_ATTEMPTS", attempts)) } };
        return options;
    }

    static long PositiveLong(string name, string value) =>
        long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0
            ? n : throw new ArgumentException($"{name}: \"{value}\" is not a positive whole number");

    static string DefaultCacheDirectory()
    {
        var root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) is { Length: > 0 } home ? home : Path.GetTempPath(), ".cache");
        return Path.Combine(root, "dtrain", "s3");
    }

    /// <summary>The SDK client these options describe (the SDK's own retries off: <see cref="Retry"/> does that).</summary>
    public AmazonS3Client CreateClient()
    {
        if (BlockBytes < 1) throw new ArgumentException($"S3StoreOptions.BlockBytes is {BlockBytes}; at least 1");
        if (PartBytes < 5 << 20) throw new ArgumentException($"S3StoreOptions.PartBytes is {PartBytes}; S3 parts are at least 5 MiB");
        var config = new AmazonS3Config
        {
            MaxErrorRetry = 0,
            Timeout = RequestTimeout,
            ForcePathStyle = ForcePathStyle ?? Endpoint is not null,
            // Many S3-compatible servers store aws-chunked uploads with trailing checksums verbatim or refuse them:
            // checksums only where the API requires them. Stored files are checked against their SHA-256 instead.
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
        };
        if (Endpoint is not null)
        {
            config.ServiceURL = Endpoint.ToString();
            config.AuthenticationRegion = Region ?? "us-east-1";
        }
        else if (Region is not null)
        {
            config.RegionEndpoint = Amazon.RegionEndpoint.GetBySystemName(Region);
        }
        return Credentials is null ? new AmazonS3Client(config) : new AmazonS3Client(Credentials, config);
    }
}
