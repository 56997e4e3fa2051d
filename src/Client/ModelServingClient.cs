using System.Net;
using System.Runtime.CompilerServices;
using Dtrain.Protos.Serving;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace Dtrain.Client;

/// <summary>Where a model server's gRPC port is (`dtrain serve-model`, --grpc-port) and how to reach it.</summary>
public sealed record ModelServingClientOptions
{
    /// <summary>The gRPC address, e.g. https://models:8601; default http://127.0.0.1:8601.</summary>
    public string Address { get; init; } = "http://127.0.0.1:8601";

    /// <summary>The server's bearer token (its --token-file), sent as "authorization: Bearer TOKEN"; none when null.</summary>
    public string? Token { get; init; }

    /// <summary>For https:// addresses: the cluster CA the server's certificate is checked against (Ca or Dir).</summary>
    public TlsSettings? Tls { get; init; }

    /// <summary>Send the token over plain http:// to a host beyond loopback; refused otherwise.</summary>
    public bool Insecure { get; init; }
}

/// <summary>
/// A typed client of a model server's gRPC service (protos/dtrain/serving.proto; docs/serving.md): <see cref="PredictAsync"/>,
/// <see cref="GenerateAsync"/> and <see cref="GenerateStreamAsync"/> (each token's text as it is drawn). The server's
/// refusals are <see cref="RpcException"/>s (InvalidArgument naming the field, Unauthenticated, Unavailable, ...).
/// Thread-safe.
/// </summary>
public sealed class ModelServingClient : IDisposable
{
    private readonly GrpcChannel channel;

    /// <summary>The generated gRPC client.</summary>
    public ModelServing.ModelServingClient Grpc { get; }

    public ModelServingClient(ModelServingClientOptions? options = null)
    {
        options ??= new ModelServingClientOptions();
        if (!Uri.TryCreate(options.Address, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"Address \"{options.Address}\" must be an http(s) URL, e.g. http://127.0.0.1:8601");
        if (options.Token is not null && uri.Scheme == Uri.UriSchemeHttp && !IsLoopback(uri.Host) && !options.Insecure)
            throw new ArgumentException($"refusing to send the token unencrypted to {options.Address} (http:// beyond loopback); use the server's https:// address, or set Insecure on a network you trust");
        var tls = uri.Scheme == Uri.UriSchemeHttps && options.Tls is { HasMaterial: true } settings
            ? settings.Load("TLS (ModelServingClientOptions.Tls)", CertificateNeed.Optional)
            : null;
        channel = Channels.Create(options.Address, tls, ExpectedPeer.AnyMember);
        CallInvoker invoker = channel.CreateCallInvoker();
        if (options.Token is { } token)
        {
            var header = "Bearer " + token;
            invoker = channel.Intercept(metadata =>
            {
                metadata.Add("authorization", header);
                return metadata;
            });
        }
        Grpc = new ModelServing.ModelServingClient(invoker);
    }

    /// <summary>Classifies <paramref name="texts"/>: one prediction per text, in order, with its <paramref name="topK"/> most probable labels (null: the server's default).</summary>
    public async Task<IReadOnlyList<TextPrediction>> PredictAsync(IEnumerable<string> texts, int? topK = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var request = new PredictRequest();
        request.Texts.AddRange(texts);
        if (topK is { } k) request.TopK = k;
        return (await Grpc.PredictAsync(request, cancellationToken: cancellationToken)).Predictions;
    }

    /// <summary>Generates text after <paramref name="prompt"/> (returned without it); unset settings take the server's defaults.</summary>
    public async Task<string> GenerateAsync(string prompt = "", int? length = null, double? temperature = null, int? topK = null, long? seed = null, CancellationToken cancellationToken = default) =>
        (await Grpc.GenerateAsync(Request(prompt, length, temperature, topK, seed), cancellationToken: cancellationToken)).Text;

    /// <summary>The same generation, each token's text as it is drawn (joined, they are <see cref="GenerateAsync"/>'s text).</summary>
    public async IAsyncEnumerable<string> GenerateStreamAsync(string prompt = "", int? length = null, double? temperature = null, int? topK = null, long? seed = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = Grpc.GenerateStream(Request(prompt, length, temperature, topK, seed), cancellationToken: cancellationToken);
        await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancellationToken))
            if (!chunk.Done) yield return chunk.Text;
    }

    private static GenerateRequest Request(string prompt, int? length, double? temperature, int? topK, long? seed)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var r = new GenerateRequest { Prompt = prompt };
        if (length is { } n) r.Length = n;
        if (temperature is { } t) r.Temperature = t;
        if (topK is { } k) r.TopK = k;
        if (seed is { } s) r.Seed = s;
        return r;
    }

    private static bool IsLoopback(string host) => host == "localhost" || (IPAddress.TryParse(host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));

    public void Dispose() => channel.Dispose();
}
