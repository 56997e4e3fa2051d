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
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Dtrain.Serving;

/// <summary>
/// `dtrain serve-model`: HTTP/JSON prediction (/v1/predict) and generation (/v1/generate, streamed as NDJSON on request)
/// with dynamic batching (<see cref="InferenceQueue"/>), /health/live, /health/ready, Prometheus /metrics and an OpenAPI
/// document at /openapi.json. On stop (SIGTERM) it drains: readiness turns 503, new requests are refused with 503, and
/// every request already taken is answered before the process exits. docs/serving.md.
/// </summary>
public sealed class ModelServer : IAsyncDisposable
{
    static readonly JsonSerializerOptions Json = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };

    readonly ServingOptions options;
    readonly ServingMetrics metrics = new();
    readonly InferenceQueue queue;
    readonly WebApplication app;
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

    /// <summary>The address clients use (a wildcard bind is shown as loopback).</summary>
    public Uri Address
    {
        get
        {
            var bound = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
            var host = bound.Host is "0.0.0.0" or "[::]" ? "127.0.0.1" : bound.Host;
            return new UriBuilder(bound.Scheme, host, bound.Port).Uri;
        }
    }

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
        _ => "other",
    };

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
            metrics.Requests.WithLabels(route, ctx.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();
            metrics.Latency.WithLabels(route).Observe(Stopwatch.GetElapsedTime(started).TotalSeconds);
        }
    }

    /// <summary>With a token (--token-file), /v1/* needs "Authorization: Bearer TOKEN"; health, metrics and the OpenAPI document do not.</summary>
    Task Authorize(HttpContext ctx, RequestDelegate next)
    {
        if (options.Token is not { } token || !ctx.Request.Path.StartsWithSegments("/v1")) return next(ctx);
        var header = ctx.Request.Headers.Authorization.ToString();
        var given = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..].Trim() : "";
        if (CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(given), Encoding.UTF8.GetBytes(token))) return next(ctx);
        ctx.Response.Headers.WWWAuthenticate = "Bearer";
        return Results.Json(new ErrorResponse(given.Length == 0 ? "this server needs a token: send \"Authorization: Bearer TOKEN\"" : "the token is not valid for this server"), Json, statusCode: 401).ExecuteAsync(ctx);
    }

    static IResult Error(int status, string message, string? field = null) => Results.Json(new ErrorResponse(message, field), Json, statusCode: status);

    static IResult Unavailable(HttpContext ctx, string message)
    {
        ctx.Response.Headers.RetryAfter = "1";
        return Error(503, message);
    }

    /// <summary>The model when it can take requests now, else the answer to give (503 loading/draining, 404 wrong kind).</summary>
    async Task<(TrainedModel? Model, IResult? Refusal)> Admit(HttpContext ctx, bool classifier)
    {
        if (draining) return (null, Unavailable(ctx, "the server is draining (shutting down): send the request to another replica"));
        if (!queue.Loaded.IsCompleted) return (null, Unavailable(ctx, "the model is still loading: retry when /health/ready answers 200"));
        if (!queue.Loaded.IsCompletedSuccessfully) return (null, Error(503, $"the model could not be loaded: {queue.Loaded.Exception!.InnerException!.Message}"));
        var model = await queue.Loaded;
        var isClassifier = model.Engine.Model is RecurrentClassifier;
        if (isClassifier != classifier)
            return (null, Error(404, isClassifier ? "this server serves a classifier: use POST /v1/predict" : "this server serves a language model: use POST /v1/generate"));
        return (model, null);
    }

    static async Task<JsonElement> Body(HttpContext ctx)
    {
        try
        {
            using var doc = await JsonDocument.ParseAsync(ctx.Request.Body, cancellationToken: ctx.RequestAborted);
            return doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new BadRequestException("$", $"$ (the request body) is not valid JSON: {e.Message}");
        }
    }

    async Task<IResult> PredictAsync(HttpContext ctx)
    {
        var (model, refusal) = await Admit(ctx, classifier: true);
        if (refusal is not null) return refusal;
        PredictRequest request;
        try
        {
            request = RequestReader.Predict(await Body(ctx), model!.Spec.Data.MaxLength, model.Labels.Count, options.MaxTexts);
        }
        catch (BadRequestException e)
        {
            return Error(400, e.Message, e.Field);
        }
        var work = new PredictWork { Texts = request.Texts, Aborted = ctx.RequestAborted };
        if (!queue.TryEnqueue(work)) return Unavailable(ctx, $"the queue is full ({options.QueueCapacity} requests waiting): retry later");
        var predictions = await work.Done.Task;
        var k = request.TopK ?? Math.Min(RequestReader.DefaultTopK, model.Labels.Count);
        return Results.Json(new PredictResponse([.. predictions.Select(p => new TextPrediction(p.Label, p.Probability,
            [.. p.Probabilities.OrderByDescending(kv => kv.Value).Take(k).Select(kv => new LabelProbability(kv.Key, kv.Value))]))]), Json);
    }

    async Task<IResult> GenerateAsync(HttpContext ctx)
    {
        var (model, refusal) = await Admit(ctx, classifier: false);
        if (refusal is not null) return refusal;
        GenerateRequest request;
        try
        {
            request = RequestReader.Generate(await Body(ctx), model!.Spec.Data.MaxLength, options.MaxGenerateLength);
        }
        catch (BadRequestException e)
        {
            return Error(400, e.Message, e.Field);
        }
        var stream = request.Stream == true;
        var work = new GenerateWork
        {
            Prompt = request.Prompt ?? "",
            Length = request.Length ?? Math.Min(RequestReader.DefaultLength, options.MaxGenerateLength),
            Temperature = request.Temperature ?? 0.8,
            TopK = request.TopK ?? 0,
            Seed = request.Seed ?? 1,
            Pieces = stream ? Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true }) : null,
            Aborted = ctx.RequestAborted,
        };
        if (!queue.TryEnqueue(work)) return Unavailable(ctx, $"the queue is full ({options.QueueCapacity} requests waiting): retry later");
        if (!stream)
        {
            var text = await work.Done.Task;
            return Results.Json(new GenerateResponse(text, work.Length), Json);
        }
        ctx.Response.ContentType = "application/x-ndjson";
        await ctx.Response.StartAsync(ctx.RequestAborted);
        await foreach (var piece in work.Pieces!.Reader.ReadAllAsync(CancellationToken.None))
        {
            await ctx.Response.WriteAsync(JsonSerializer.Serialize(new { text = piece }) + "\n", ctx.RequestAborted);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        }
        var full = await work.Done.Task;
        await ctx.Response.WriteAsync(JsonSerializer.Serialize(new GenerateResponse(full, work.Length), Json) + "\n", ctx.RequestAborted);
        return Results.Empty;
    }
}
