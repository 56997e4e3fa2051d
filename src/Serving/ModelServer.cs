using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Dtrain.Inference;
using Dtrain.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Serving;

/// <summary>
/// `dtrain serve-model`: HTTP/JSON prediction (/v1/predict) and generation (/v1/generate, streamed as NDJSON on request)
/// with dynamic batching (<see cref="InferenceQueue"/>), /health/live, /health/ready, Prometheus /metrics and an OpenAPI
/// document at /openapi.json; the same over gRPC on a second port (<see cref="ModelServingService"/>, protos/dtrain/serving.proto),
/// sharing the queue, the metrics, TLS, the token and the drain. On stop (SIGTERM) it drains: readiness turns 503, new requests are refused with 503, and
/// every request already taken is answered before the process exits. docs/serving.md.
/// </summary>
public sealed class ModelServer : IAsyncDisposable
{
    readonly ServingOptions options;
    readonly ServingMetrics metrics = new();
    readonly InferenceQueue queue;
    readonly WebApplication app;
    ListenOptions? httpListen;
    ListenOptions? grpcListen;
    volatile bool draining;

    ModelServer(ServingOptions options)
    {
        this.options = options;
        queue = new InferenceQueue(options, metrics);
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseKestrelHttpsConfiguration();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole().SetMinimumLevel(LogLevel.Warning);
        // Drain: every request taken is answered (bounded by the requests, not a clock: the queue is finite).
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = Timeout.InfiniteTimeSpan);
        builder.Services.AddGrpc(g => g.MaxReceiveMessageSize = 64 * 1024 * 1024);
        builder.Services.AddSingleton(this);
        builder.Services.AddOpenApi("v1", o => o.AddDocumentTransformer((doc, _, _) =>
        {
            doc.Info.Title = "dtrain model server";
            doc.Info.Description = "Classify texts (/v1/predict) or generate text (/v1/generate) with a model trained by dtrain. docs/serving.md.";
            doc.Info.Version = "v1";
            return Task.CompletedTask;
        }));
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            var ip = string.Equals(options.Listen, "localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback : IPAddress.Parse(options.Listen);
            k.Listen(ip, options.Port, l =>
            {
                httpListen = l;
                if (options.Certificate is { } cert) l.UseHttps(cert);
            });
            // gRPC on a port of its own (as Triton's 8001 beside 8000): HTTP/2 only, so plaintext clients need no upgrade.
            k.Listen(ip, options.GrpcPortToBind, l =>
            {
                grpcListen = l;
                l.Protocols = HttpProtocols.Http2;
                if (options.Certificate is { } cert) l.UseHttps(cert);
            });
        });
        app = builder.Build();
        app.Lifetime.ApplicationStopping.Register(() => draining = true);
        app.Use(Observe);
        app.Use(Authorize);
        app.MapGet("/health/live", () => Results.Json(new { status = "live" }));
        app.MapGet("/health/ready", Ready);
        app.MapGet("/metrics", async (HttpContext ctx) =>
        {
            ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await metrics.Registry.CollectAndExportAsTextAsync(ctx.Response.Body, ctx.RequestAborted);
        }).ExcludeFromDescription();
        app.MapOpenApi("/openapi.json");
        app.MapGrpcService<ModelServingService>();
        app.MapPost("/v1/predict", (Func<HttpContext, Task<IResult>>)PredictAsync)
            .WithName("predict")
            .WithSummary("Classify texts: per text the top_k labels with their probabilities (a classification model).")
            .Accepts<PredictRequest>("application/json")
            .Produces<PredictResponse>(StatusCodes.Status200OK)
            .Produces<ErrorResponse>(StatusCodes.Status400BadRequest)
            .Produces<ErrorResponse>(StatusCodes.Status401Unauthorized)
            .Produces<ErrorResponse>(StatusCodes.Status404NotFound)
            .Produces<ErrorResponse>(StatusCodes.Status503ServiceUnavailable);
        app.MapPost("/v1/generate", (Func<HttpContext, Task<IResult>>)GenerateAsync)
            .WithName("generate")
            .WithSummary("Generate text from a prompt (a language model); \"stream\": true answers NDJSON, one {\"text\"} line per token, then the full answer with \"done\": true.")
            .Accepts<GenerateRequest>("application/json")
            .Produces<GenerateResponse>(StatusCodes.Status200OK, "application/json", "application/x-ndjson")
            .Produces<ErrorResponse>(StatusCodes.Status400BadRequest)
            .Produces<ErrorResponse>(StatusCodes.Status401Unauthorized)
            .Produces<ErrorResponse>(StatusCodes.Status404NotFound)
            .Produces<ErrorResponse>(StatusCodes.Status503ServiceUnavailable);
    }

    /// <summary>Starts listening and loading the model (on the inference thread); /health/ready answers 200 once it is loaded.</summary>
    public static async Task<ModelServer> StartAsync(ServingOptions options)
    {
        options.Validate();
        var server = new ModelServer(options);
        await server.app.StartAsync();
        server.queue.Start();
        return server;
    }

    /// <summary>The HTTP/JSON address clients use (a wildcard bind is shown as loopback).</summary>
    public Uri Address => Bound(httpListen!);

    /// <summary>The gRPC address clients use (a wildcard bind is shown as loopback).</summary>
    public Uri GrpcAddress => Bound(grpcListen!);

    Uri Bound(ListenOptions listen)
    {
        // Kestrel sets the endpoint's port to the one it bound (port 0 = any free port).
        var endpoint = listen.IPEndPoint!;
        var host = endpoint.Address.Equals(IPAddress.Any) || endpoint.Address.Equals(IPAddress.IPv6Any) ? "127.0.0.1" : endpoint.Address.ToString();
        return new UriBuilder(options.Certificate is null ? "http" : "https", host, endpoint.Port).Uri;
    }

    internal ServingOptions Options => options;
    internal ServingMetrics Metrics => metrics;
    internal InferenceQueue Queue => queue;

    /// <summary>The model, once loaded (faulted when it could not be).</summary>
    public Task<TrainedModel> Loaded => queue.Loaded;

    /// <summary>Stops when the host is told to (SIGTERM, Ctrl+C) and the drain is done.</summary>
    public Task WaitForShutdownAsync() => app.WaitForShutdownAsync();

    /// <summary>Drains: refuses new requests, answers every request taken, then stops the inference thread.</summary>
    public async Task StopAsync()
    {
        draining = true;
        await app.StopAsync();
        queue.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        await app.DisposeAsync();
    }

    IResult Ready()
    {
        if (draining) return Results.Json(new { status = "draining" }, statusCode: 503);
        if (!queue.Loaded.IsCompleted) return Results.Json(new { status = "loading" }, statusCode: 503);
        if (!queue.Loaded.IsCompletedSuccessfully) return Results.Json(new { status = "failed", error = queue.Loaded.Exception!.InnerException!.Message }, statusCode: 503);
        return Results.Json(new { status = "ready" });
    }

    static string Route(PathString path) => path.Value switch
    {
        "/v1/predict" or "/v1/generate" or "/health/live" or "/health/ready" or "/metrics" or "/openapi.json" => path.Value,
        _ when ModelServingService.Methods.Contains(path.Value!) => path.Value!,
        _ => "other",
    };

    /// <summary>The HTTP status code, or for a gRPC call its status name (OK, InvalidArgument, ...) from grpc-status.</summary>
    static string Status(HttpContext ctx)
    {
        if (ctx.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true)
        {
            var status = ctx.Response.Headers["grpc-status"].ToString();
            if (status.Length == 0) status = ctx.Features.Get<IHttpResponseTrailersFeature>()?.Trailers["grpc-status"].ToString() ?? "";
            if (int.TryParse(status, System.Globalization.CultureInfo.InvariantCulture, out var code)) return ((Grpc.Core.StatusCode)code).ToString();
        }
        return ctx.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    async Task Observe(HttpContext ctx, RequestDelegate next)
    {
        var started = Stopwatch.GetTimestamp();
        try
        {
            await next(ctx);
        }
        finally
        {
            var route = Route(ctx.Request.Path);
            metrics.Requests.WithLabels(route, Status(ctx)).Inc();
            metrics.Latency.WithLabels(route).Observe(Stopwatch.GetElapsedTime(started).TotalSeconds);
        }
    }

    /// <summary>With a token (--token-file), /v1/* needs "Authorization: Bearer TOKEN"; health, metrics and the OpenAPI document do not.</summary>
    Task Authorize(HttpContext ctx, RequestDelegate next)
    {
        if (!ctx.Request.Path.StartsWithSegments("/v1") || TokenRefusal(ctx.Request.Headers.Authorization.ToString()) is not { } refusal) return next(ctx);
        ctx.Response.Headers.WWWAuthenticate = "Bearer";
        return Results.Json(new ErrorResponse(refusal), ServingJson.Default.ErrorResponse, statusCode: 401).ExecuteAsync(ctx);
    }

    /// <summary>Why a request with this Authorization header (or gRPC "authorization" metadata) is refused; null when no token is needed or it is the token.</summary>
    internal string? TokenRefusal(string header)
    {
        if (options.Token is not { } token) return null;
        var given = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..].Trim() : "";
        if (CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(token))) return null;
        return given.Length == 0 ? "this server needs a token: send \"Authorization: Bearer TOKEN\"" : "the token is not valid for this server";
    }

    static IResult Error(int status, string message, string? field = null) => Results.Json(new ErrorResponse(message, field), ServingJson.Default.ErrorResponse, statusCode: status);

    static IResult Unavailable(HttpContext ctx, string message)
    {
        ctx.Response.Headers.RetryAfter = "1";
        return Error(503, message);
    }

    /// <summary>Why a request cannot be taken now; HTTP answers 503 (with Retry-After when it may be retried) or 404, gRPC the matching status.</summary>
    internal enum RefusalKind { Draining, Loading, Failed, WrongModel, QueueFull }

    internal sealed record Refusal(RefusalKind Kind, string Message)
    {
        public bool RetryLater => Kind is RefusalKind.Draining or RefusalKind.Loading or RefusalKind.QueueFull;
    }

    /// <summary>The model when it can take requests now, else why not (loading, draining, failed, the other kind of model).</summary>
    internal (TrainedModel? Model, Refusal? Refusal) Admit(bool classifier, bool grpc)
    {
        if (draining) return (null, new(RefusalKind.Draining, "the server is draining (shutting down): send the request to another replica"));
        if (!queue.Loaded.IsCompleted) return (null, new(RefusalKind.Loading, "the model is still loading: retry when /health/ready answers 200"));
        if (!queue.Loaded.IsCompletedSuccessfully) return (null, new(RefusalKind.Failed, $"the model could not be loaded: {queue.Loaded.Exception!.InnerException!.Message}"));
        var model = queue.Loaded.Result;
        var isClassifier = model.Engine.Model is RecurrentClassifier;
        if (isClassifier != classifier)
            return (null, new(RefusalKind.WrongModel, (isClassifier, grpc) switch
            {
                (true, false) => "this server serves a classifier: use POST /v1/predict",
                (false, false) => "this server serves a language model: use POST /v1/generate",
                (true, true) => "this server serves a classifier: use Predict",
                (false, true) => "this server serves a language model: use Generate or GenerateStream",
            }));
        return (model, null);
    }

    internal Refusal QueueFull => new(RefusalKind.QueueFull, $"the queue is full ({options.QueueCapacity} requests waiting): retry later");

    static IResult Answer(HttpContext ctx, Refusal refusal) => refusal.Kind switch
    {
        RefusalKind.WrongModel => Error(404, refusal.Message),
        _ when refusal.RetryLater => Unavailable(ctx, refusal.Message),
        _ => Error(503, refusal.Message),
    };

    /// <summary>Each text's top <paramref name="topK"/> labels (unset: 3, or all when fewer), most probable first.</summary>
    internal static List<TextPrediction> Ranked(IReadOnlyList<Prediction> predictions, int? topK, int labels)
    {
        var k = topK ?? Math.Min(RequestReader.DefaultTopK, labels);
        return [.. predictions.Select(p => new TextPrediction(p.Label, p.Probability,
            [.. p.Probabilities.OrderByDescending(kv => kv.Value).Take(k).Select(kv => new LabelProbability(kv.Key, kv.Value))]))];
    }

    /// <summary>The work of a checked generation request; <paramref name="stream"/> gets each token's text as it is drawn.</summary>
    internal GenerateWork Generation(GenerateRequest request, bool stream, CancellationToken aborted) => new()
    {
        Prompt = request.Prompt ?? "",
        Length = request.Length ?? Math.Min(RequestReader.DefaultLength, options.MaxGenerateLength),
        Temperature = request.Temperature ?? 0.8,
        TopK = request.TopK ?? 0,
        Seed = request.Seed ?? 1,
        Pieces = stream ? Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true }) : null,
        Aborted = aborted,
    };

    /// <summary>The request body parsed (its buffers pooled: dispose it once read, rather than copy it out).</summary>
    static async Task<JsonDocument> Body(HttpContext ctx)
    {
        try
        {
            return await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
        }
        catch (JsonException e)
        {
            throw new BadRequestException("$", $"$ (the request body) is not valid JSON: {e.Message}");
        }
    }

    async Task<IResult> PredictAsync(HttpContext ctx)
    {
        var (model, refusal) = Admit(classifier: true, grpc: false);
        if (refusal is not null) return Answer(ctx, refusal);
        PredictRequest request;
        try
        {
            using var body = await Body(ctx);
            request = RequestReader.Predict(body.RootElement, model!.Spec.Data.MaxLength, model.Labels.Count, options.MaxTexts);
        }
        catch (BadRequestException e)
        {
            return Error(400, e.Message, e.Field);
        }
        var work = new PredictWork { Texts = request.Texts, Aborted = ctx.RequestAborted };
        if (!queue.TryEnqueue(work)) return Answer(ctx, QueueFull);
        var predictions = await work.Done.Task;
        return Results.Json(new PredictResponse(Ranked(predictions, request.TopK, model.Labels.Count)), ServingJson.Default.PredictResponse);
    }

    async Task<IResult> GenerateAsync(HttpContext ctx)
    {
        var (model, refusal) = Admit(classifier: false, grpc: false);
        if (refusal is not null) return Answer(ctx, refusal);
        GenerateRequest request;
        try
        {
            using var body = await Body(ctx);
            request = RequestReader.Generate(body.RootElement, model!.Spec.Data.MaxLength, options.MaxGenerateLength);
        }
        catch (BadRequestException e)
        {
            return Error(400, e.Message, e.Field);
        }
        var stream = request.Stream == true;
        var work = Generation(request, stream, ctx.RequestAborted);
        if (!queue.TryEnqueue(work)) return Answer(ctx, QueueFull);
        if (!stream)
        {
            var text = await work.Done.Task;
            return Results.Json(new GenerateResponse(text, work.Length), ServingJson.Default.GenerateResponse);
        }
        ctx.Response.ContentType = "application/x-ndjson";
        await ctx.Response.StartAsync(ctx.RequestAborted);
        await foreach (var piece in work.Pieces!.Reader.ReadAllAsync(CancellationToken.None))
        {
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new { text = piece }) + "\n", ctx.RequestAborted);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        }
        var full = await work.Done.Task;
        await ctx.Response.WriteAsync(JsonSerializer.Serialize(new GenerateResponse(full, work.Length), ServingJson.Default.GenerateResponse) + "\n", ctx.RequestAborted);
        return Results.Empty;
    }
}
