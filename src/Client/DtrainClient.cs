using System.Net;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Dtrain.Checkpoints;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Specs;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace Dtrain.Client;

/// <summary>Where a coordinator is and how to prove who we are: as the CLI's --coordinator, token and TLS options.</summary>
public sealed record DtrainClientOptions
{
    /// <summary>Coordinator URL; default $DTRAIN_COORDINATOR, else http://127.0.0.1:5000.</summary>
    public string? Address { get; init; }

    /// <summary>The bearer token; default $DTRAIN_TOKEN, then the file named by $DTRAIN_TOKEN_FILE, then "token" in ~/.config/dtrain/config.json.</summary>
    public string? Token { get; init; }

    /// <summary>TLS for https:// addresses (cluster CA, client certificate); default $DTRAIN_TLS_DIR, $DTRAIN_CA, $DTRAIN_CERT, $DTRAIN_KEY.</summary>
    public TlsSettings? Tls { get; init; }

    /// <summary>Send the token over plain http:// to a host beyond loopback (the CLI's --insecure); refused otherwise.</summary>
    public bool Insecure { get; init; }
}

/// <summary>
/// A typed client of a dtrain coordinator, over the protocol, TLS and tokens of the <c>dtrain</c> CLI:
/// <see cref="SubmitAsync"/>, <see cref="WatchAsync"/> (the job's events as an async stream), <see cref="StatusAsync"/>,
/// <see cref="DownloadCheckpointAsync"/>. Server errors surface as <see cref="RpcException"/> with the coordinator's detail.
/// Thread-safe: one client serves any number of calls.
/// </summary>
public sealed class DtrainClient : IDisposable
{
    public const string DefaultAddress = "http://127.0.0.1:5000";

    private readonly GrpcChannel channel;

    /// <summary>The generated gRPC client, for calls this class does not wrap (List, Cancel, ListWorkers, ...).</summary>
    public Jobs.JobsClient Jobs { get; }

    public string Address { get; }

    public DtrainClient(DtrainClientOptions? options = null)
    {
        options ??= new DtrainClientOptions();
        Address = options.Address ?? Environment.GetEnvironmentVariable("DTRAIN_COORDINATOR") ?? DefaultAddress;
        var settings = options.Tls ?? new TlsSettings
        {
            Dir = Environment.GetEnvironmentVariable("DTRAIN_TLS_DIR"),
            Ca = Environment.GetEnvironmentVariable("DTRAIN_CA"),
            Cert = Environment.GetEnvironmentVariable("DTRAIN_CERT"),
            Key = Environment.GetEnvironmentVariable("DTRAIN_KEY"),
        };
        var https = Uri.TryCreate(Address, UriKind.Absolute, out var uri) && uri.Scheme == Uri.UriSchemeHttps;
        var tls = https && settings.HasMaterial ? settings.Load("TLS (DtrainClientOptions.Tls; DTRAIN_TLS_DIR, DTRAIN_CA, DTRAIN_CERT, DTRAIN_KEY)", CertificateNeed.Optional) : null;
        channel = Channels.Create(Address, tls, ExpectedPeer.Coordinator, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = 256 * 1024 * 1024,
            MaxSendMessageSize = 256 * 1024 * 1024,
        });
        var token = options.Token ?? ResolveToken();
        CallInvoker invoker = channel.CreateCallInvoker();
        if (token is not null)
        {
            if (uri is not null && uri.Scheme == Uri.UriSchemeHttp && !IsLoopback(uri.Host) && !options.Insecure)
            {
                channel.Dispose();
                throw new ArgumentException($"refusing to send the token unencrypted to {Address} (http:// beyond loopback); use the coordinator's https:// address, or set Insecure on a network you trust");
            }
            var header = "Bearer " + token;
            invoker = channel.Intercept(metadata =>
            {
                metadata.Add("authorization", header);
                return metadata;
            });
        }
        Jobs = new Jobs.JobsClient(invoker);
    }

    /// <summary>
    /// Submits a job: <paramref name="specJsonOrPath"/> is a spec's JSON text (starts with '{'), or the path of a spec file
    /// whose data files are uploaded first (as <c>dtrain submit</c> does). Returns the job id. An invalid spec is refused
    /// before anything is sent (<see cref="SpecException"/>), a refused one by the coordinator as <see cref="RpcException"/>.
    /// </summary>
    public async Task<string> SubmitAsync(string specJsonOrPath, int workers = 0, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(specJsonOrPath);
        SubmitRequest request;
        if (specJsonOrPath.TrimStart().StartsWith('{'))
        {
            JobSpecSerializer.Parse(specJsonOrPath);
            request = new SubmitRequest { SpecJson = specJsonOrPath, Workers = workers, Source = "<spec>" };
        }
        else
        {
            var file = new FileInfo(specJsonOrPath);
            if (!file.Exists) throw new FileNotFoundException($"spec file not found: {file.FullName}", file.FullName);
            var parsed = JobSpecSerializer.Load(file.FullName);
            request = new SubmitRequest { SpecJson = await File.ReadAllTextAsync(file.FullName, cancellationToken), Workers = workers, Source = file.Name, SpecDir = file.DirectoryName! };
            foreach (var (path, field) in new[] { (parsed.Data.Train, "train"), (parsed.Data.Validation, "validation") })
            {
                if (path is null || parsed.Data.Format == DataFormats.Synthetic) continue;
                var full = JobSpecPaths.Resolve(file.DirectoryName!, path)!;
                if (!File.Exists(full)) throw new SpecException(file.Name, [new SpecError($"$.data.{field}", $"file not found: {full}")]);
                request.UploadedFiles[path] = await UploadAsync(full, cancellationToken);
            }
        }
        return (await Jobs.SubmitAsync(request, cancellationToken: cancellationToken)).JobId;
    }

    private Task<string> UploadAsync(string path, CancellationToken cancellationToken) => FileUpload.SendAsync(Jobs, path, cancellationToken);

    /// <summary>The job's record now: state, step, loss, last evaluation, workers, checkpoint.</summary>
    public async Task<JobInfo> StatusAsync(string jobId, CancellationToken cancellationToken = default) =>
        await Jobs.GetAsync(new GetJobRequest { JobId = jobId }, cancellationToken: cancellationToken);

    /// <summary>
    /// The job's events (state changes, steps, evaluations, log lines) until it ends: the stream completes after the event
    /// that says the job succeeded, failed or was cancelled. The coordinator first replays the job's state and last progress.
    /// A broken stream is an <see cref="RpcException"/> (no reconnecting here: call again to resume watching).
    /// </summary>
    public async IAsyncEnumerable<JobEvent> WatchAsync(string jobId, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = Jobs.Watch(new WatchJobRequest { JobId = jobId }, cancellationToken: cancellationToken);
        while (await call.ResponseStream.MoveNext(cancellationToken))
        {
            var e = call.ResponseStream.Current;
            yield return e;
            if (e.KindCase == JobEvent.KindOneofCase.State && e.State.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled)
                yield break;
        }
    }

    /// <summary>
    /// Downloads the job's newest checkpoint (its final model once it succeeded) to <paramref name="target"/>: written to
    /// TARGET.part, verified, then renamed, so a refused or broken download leaves nothing and an earlier file stays.
    /// Returns the bytes written.
    /// </summary>
    public async Task<long> DownloadCheckpointAsync(string jobId, string target, CancellationToken cancellationToken = default)
    {
        target = Path.GetFullPath(target);
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        var tmp = target + ".part";
        long total = 0;
        try
        {
            using (var call = Jobs.Download(new DownloadRequest { JobId = jobId }, cancellationToken: cancellationToken))
            {
                FileStream? file = null;
                try
                {
                    while (await call.ResponseStream.MoveNext(cancellationToken))
                    {
                        file ??= File.Create(tmp);
                        call.ResponseStream.Current.Data.WriteTo(file);
                        total += call.ResponseStream.Current.Data.Length;
                    }
                    if (file is null) throw new InvalidDataException($"{jobId}: the coordinator sent an empty checkpoint; nothing was written to {target}");
                    file.Flush(flushToDisk: true);
                }
                finally
                {
                    if (file is not null) await file.DisposeAsync();
                }
            }
            try
            {
                CheckpointStore.ReadFile(tmp);
            }
            catch (CorruptCheckpointException e)
            {
                throw new InvalidDataException($"{jobId}: the downloaded checkpoint is damaged ({e.Reason}); nothing was written to {target}", e);
            }
            File.Move(tmp, target, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
        return total;
    }

    /// <summary>$DTRAIN_TOKEN, the file named by $DTRAIN_TOKEN_FILE, then "token" in the CLI's config file; null when none.</summary>
    private static string? ResolveToken()
    {
        if (Environment.GetEnvironmentVariable("DTRAIN_TOKEN") is { Length: > 0 } value) return value.Trim();
        if (Environment.GetEnvironmentVariable("DTRAIN_TOKEN_FILE") is { Length: > 0 } file)
        {
            if (!File.Exists(file)) throw new FileNotFoundException($"token file {file} ($DTRAIN_TOKEN_FILE) not found", file);
            return File.ReadLines(file).Select(l => l.Trim()).FirstOrDefault(l => l.Length > 0)
                   ?? throw new ArgumentException($"token file {file} ($DTRAIN_TOKEN_FILE) is empty");
        }
        var root = Environment.GetEnvironmentVariable("XDG_CONFIG_HOME") is { Length: > 0 } xdg
            ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".config");
        var config = Path.Combine(root, "dtrain", "config.json");
        if (!File.Exists(config)) return null;
        using var doc = JsonDocument.Parse(File.ReadAllBytes(config), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("token", out var t) && t.ValueKind == JsonValueKind.String && t.GetString()!.Trim() is { Length: > 0 } s ? s : null;
    }

    private static bool IsLoopback(string host) => host == "localhost" || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    public void Dispose() => channel.Dispose();
}
