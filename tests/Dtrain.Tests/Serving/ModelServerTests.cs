using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Dtrain.Serving;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Serving;

/// <summary>
/// `dtrain serve-model`: a real server on a free loopback port with tiny trained models — its answers equal
/// `dtrain predict` / `dtrain generate`, concurrent clients are batched, bad requests name the field, and SIGTERM drains.
/// </summary>
public sealed class ModelServerTests(ServingModels models) : IClassFixture<ServingModels>
{
    static readonly string[] Texts =
    [
        "win money now offer 3",
        "meeting notes for project 8",
        "win",
        "",
        "notes notes money zebra",
        "meeting now win money for project offer",
    ];

    static async Task<ModelServer> Start(string model, Func<ServingOptions, ServingOptions>? with = null)
    {
        var options = new ServingOptions { ModelPath = model, Port = 0 };
        var server = await ModelServer.StartAsync(with?.Invoke(options) ?? options);
        await server.Loaded;
        return server;
    }

    static HttpClient Client(ModelServer server) => new() { BaseAddress = server.Address };

    static StringContent JsonBody(string json) => new(json, Encoding.UTF8, "application/json");

    static string F3(double v) => v.ToString("F3", CultureInfo.InvariantCulture);

    [Fact]
    public async Task Predictions_equal_dtrain_predict()
    {
        await using var server = await Start(models.Classifier);
        using var http = Client(server);
        var response = await http.PostAsJsonAsync("/v1/predict", new { texts = Texts, top_k = 2 });
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = (await response.Content.ReadFromJsonAsync<PredictResponse>())!;
        Assert.Equal(Texts.Length, body.Predictions.Count);

        var cli = CliRunner.Run(models.Dir, ["predict", models.Classifier, .. Texts, "--top", "2"]);
        Assert.True(cli.ExitCode == 0, cli.ToString());
        var rows = cli.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(Texts.Length, rows.Length);
        for (var i = 0; i < Texts.Length; i++)
        {
            var p = body.Predictions[i];
            var top = string.Join("  ", p.Top.Select(t => $"{t.Label}={F3(t.Probability)}"));
            Assert.StartsWith($"{p.Label}\t{F3(p.Probability)}\t{top}\t", rows[i]);
            Assert.Equal(2, p.Top.Count);
            Assert.Equal(p.Label, p.Top[0].Label);
        }
    }

    [Theory]
    [InlineData("char", "the ", 80)]
    [InlineData("word", "the cat", 25)]
    public async Task Generate_equals_dtrain_generate_with_the_same_seed_whole_and_streamed(string kind, string prompt, int length)
    {
        var model = kind == "char" ? models.CharLm : models.WordLm;
        await using var server = await Start(model);
        using var http = Client(server);
        var whole = await http.PostAsJsonAsync("/v1/generate", new { prompt, length, temperature = 0.9, top_k = 5, seed = 42 });
        Assert.Equal(HttpStatusCode.OK, whole.StatusCode);
        var answer = (await whole.Content.ReadFromJsonAsync<GenerateResponse>())!;

        var cli = CliRunner.Run(models.Dir, "generate", model, "--prompt", prompt, "--length", $"{length}", "--temperature", "0.9", "--top-k", "5", "--seed", "42");
        Assert.True(cli.ExitCode == 0, cli.ToString());
        Assert.Equal(cli.Stdout, prompt + answer.Text + "\n");

        // Streamed: one NDJSON line per token, joined they are the same text; the last line is the whole answer.
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/generate") { Content = JsonBody(JsonSerializer.Serialize(new { prompt, length, temperature = 0.9, top_k = 5, seed = 42, stream = true })) };
        using var streamed = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("application/x-ndjson", streamed.Content.Headers.ContentType!.MediaType);
        var lines = (await streamed.Content.ReadAsStringAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(length + 1, lines.Count);
        Assert.Equal(answer.Text, string.Concat(lines.Take(length).Select(l => l.GetProperty("text").GetString())));
        Assert.True(lines[^1].GetProperty("done").GetBoolean());
        Assert.Equal(answer.Text, lines[^1].GetProperty("text").GetString());
    }

    [Fact]
    public async Task Concurrent_clients_are_all_answered_correctly_and_batched()
    {
        await using var server = await Start(models.Classifier, o => o with { MaxBatch = 32, MaxWaitMs = 20 });
        using var http = Client(server);
        // Each text alone (a batch of one) first: what a batched answer must equal.
        var alone = new Dictionary<string, TextPrediction>();
        foreach (var t in Texts)
            alone[t] = (await (await http.PostAsJsonAsync("/v1/predict", new { texts = new[] { t }, top_k = 3 })).Content.ReadFromJsonAsync<PredictResponse>())!.Predictions[0];

        var answered = 0;
        await Task.WhenAll(Enumerable.Range(0, 16).Select(c => Task.Run(async () =>
        {
            for (var i = 0; i < 200 / 16 + (c < 200 % 16 ? 1 : 0); i++)
            {
                var text = Texts[(c + i) % Texts.Length];
                var response = await http.PostAsJsonAsync("/v1/predict", new { texts = new[] { text }, top_k = 3 });
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                var p = (await response.Content.ReadFromJsonAsync<PredictResponse>())!.Predictions.Single();
                Assert.Equal(alone[text].Label, p.Label);
                for (var k = 0; k < 3; k++)
                {
                    Assert.Equal(alone[text].Top[k].Label, p.Top[k].Label);
                    Assert.Equal(alone[text].Top[k].Probability, p.Top[k].Probability, 1e-5);
                }
                Interlocked.Increment(ref answered);
            }
        })));
        Assert.Equal(200, answered);

        var metrics = await http.GetStringAsync("/metrics");
        var total = Metric(metrics, "dtrain_serving_batch_size_count");
        var ofOne = Metric(metrics, "dtrain_serving_batch_size_bucket{le=\"1\"}");
        Assert.True(total - ofOne > 0, $"no forward pass classified more than one text:\n{metrics}");
        Assert.True(total < 200 + Texts.Length, $"{total} forward passes for {200 + Texts.Length} requests");
        Assert.Equal(200 + Texts.Length, Metric(metrics, "dtrain_serving_requests_total{route=\"/v1/predict\",status=\"200\"}"));
        Assert.Contains("dtrain_serving_request_duration_seconds_bucket{route=\"/v1/predict\"", metrics);
        Assert.Contains("dtrain_serving_queue_depth 0", metrics);
    }

    [Fact]
    public async Task Concurrent_generations_are_stepped_together_and_each_equals_its_text_alone()
    {
        await using var server = await Start(models.CharLm, o => o with { MaxBatch = 8, MaxGenerateLength = 100_000 });
        using var http = Client(server);
        static object Body(int seed, bool stream = false) => new { prompt = "the ", length = 60, temperature = 0.9, top_k = 5, seed, stream };
        var alone = new Dictionary<int, string>();
        for (var seed = 1; seed <= 5; seed++)
            alone[seed] = (await (await http.PostAsJsonAsync("/v1/generate", Body(seed))).Content.ReadFromJsonAsync<GenerateResponse>())!.Text;
        var before = await http.GetStringAsync("/metrics");

        // A long streamed generation runs (its first token arrived) ...
        using var abort = new CancellationTokenSource();
        using var longRequest = new HttpRequestMessage(HttpMethod.Post, "/v1/generate") { Content = JsonBody("""{"length": 100000, "stream": true}""") };
        using var running = await http.SendAsync(longRequest, HttpCompletionOption.ResponseHeadersRead, abort.Token);
        var reader = new StreamReader(await running.Content.ReadAsStreamAsync(abort.Token));
        Assert.NotNull(await reader.ReadLineAsync(abort.Token));
        // ... five more join it, each stepped with the others, one of them streamed: each is its text alone.
        var answers = await Task.WhenAll(Enumerable.Range(1, 5).Select(async seed =>
        {
            var response = await http.PostAsJsonAsync("/v1/generate", Body(seed, stream: seed == 5));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            if (seed != 5) return (seed, (await response.Content.ReadFromJsonAsync<GenerateResponse>())!.Text);
            var lines = (await response.Content.ReadAsStringAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
            Assert.Equal(60 + 1, lines.Count);
            Assert.Equal(lines[^1].GetProperty("text").GetString(), string.Concat(lines.Take(60).Select(l => l.GetProperty("text").GetString())));
            return (seed, lines[^1].GetProperty("text").GetString()!);
        }));
        foreach (var (seed, text) in answers) Assert.Equal(alone[seed], text);
        await abort.CancelAsync();
        running.Dispose();

        // Forward passes that stepped more than one generation: the batch-size histogram's observations above 1.
        var after = await http.GetStringAsync("/metrics");
        double Above1(string m) => Metric(m, "dtrain_serving_batch_size_count") - Metric(m, "dtrain_serving_batch_size_bucket{le=\"1\"}");
        Assert.True(Above1(after) - Above1(before) > 0, $"no forward pass stepped more than one generation:\n{after}");
    }

    static double Metric(string text, string name)
    {
        var line = text.Split('\n').FirstOrDefault(l => l.StartsWith(name + " ", StringComparison.Ordinal)) ?? throw new Xunit.Sdk.XunitException($"no {name} in\n{text}");
        return double.Parse(line[(name.Length + 1)..], CultureInfo.InvariantCulture);
    }

    public static TheoryData<string, string> BadPredictions => new()
    {
        { """{"texts": []}""", "$.texts" },
        { """{"texts": "one text"}""", "$.texts" },
        { """{"texts": ["a", 3]}""", "$.texts[1]" },
        { """{"texts": ["a", null]}""", "$.texts[1]" },
        { $$"""{"texts": ["a", "b", "{{new string('x', ServingModels.ClassifierMaxLength + 1)}}"]}""", "$.texts[2]" },
        { """{"texts": ["a"], "top_k": "3"}""", "$.top_k" },
        { """{"texts": ["a"], "top_k": 0}""", "$.top_k" },
        { """{"texts": ["a"], "top_k": 4}""", "$.top_k" },
        { """{"texts": ["a"], "text": "b"}""", "$.text" },
        { """{"top_k": 1}""", "$.texts" },
        { """["a"]""", "$" },
        { """{"texts": [""", "$" },
    };

    [Theory]
    [MemberData(nameof(BadPredictions))]
    public async Task Bad_predict_requests_get_400_naming_the_field(string body, string field)
    {
        await using var server = await Start(models.Classifier);
        using var http = Client(server);
        var response = await http.PostAsync("/v1/predict", JsonBody(body));
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(field, error.GetProperty("field").GetString());
        Assert.Contains(field, error.GetProperty("error").GetString());
    }

    [Fact]
    public async Task Bad_generate_requests_get_400_naming_the_field_and_the_wrong_route_404()
    {
        await using var server = await Start(models.CharLm, o => o with { MaxGenerateLength = 50 });
        using var http = Client(server);
        foreach (var (body, field) in new[]
                 {
                     ("""{"length": 0}""", "$.length"), ("""{"length": 51}""", "$.length"), ("""{"length": 2.5}""", "$.length"),
                     ("""{"temperature": -1}""", "$.temperature"), ("""{"temperature": "hot"}""", "$.temperature"),
                     ("""{"prompt": 5}""", "$.prompt"), ($$"""{"prompt": "{{new string('a', 2001)}}"}""", "$.prompt"),
                     ("""{"top_k": -1}""", "$.top_k"), ("""{"seed": "x"}""", "$.seed"), ("""{"stream": 1}""", "$.stream"), ("""{"steps": 3}""", "$.steps"),
                 })
        {
            var response = await http.PostAsync("/v1/generate", JsonBody(body));
            Assert.True(response.StatusCode == HttpStatusCode.BadRequest, body);
            Assert.Equal(field, JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("field").GetString());
        }
        var wrong = await http.PostAsync("/v1/predict", JsonBody("""{"texts": ["a"]}"""));
        Assert.Equal(HttpStatusCode.NotFound, wrong.StatusCode);
        Assert.Contains("/v1/generate", await wrong.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task A_full_queue_answers_503_with_retry_after_and_health_metrics_and_openapi_are_served()
    {
        // --max-batch 1: one generation at a time, so a second one waits in the queue.
        await using var server = await Start(models.CharLm, o => o with { QueueCapacity = 1, MaxGenerateLength = 100_000, MaxBatch = 1 });
        using var http = Client(server);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health/live")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health/ready")).StatusCode);

        // A long streamed generation holds the inference thread (taken once its first token arrives) ...
        using var abort = new CancellationTokenSource();
        using var longRequest = new HttpRequestMessage(HttpMethod.Post, "/v1/generate") { Content = JsonBody("""{"length": 100000, "stream": true}""") };
        using var running = await http.SendAsync(longRequest, HttpCompletionOption.ResponseHeadersRead, abort.Token);
        var reader = new StreamReader(await running.Content.ReadAsStreamAsync(abort.Token));
        Assert.NotNull(await reader.ReadLineAsync(abort.Token));
        // ... one more fills the queue (capacity 1) ...
        var queued = http.PostAsync("/v1/generate", JsonBody("""{"length": 5}"""));
        while (!(await http.GetStringAsync("/metrics")).Contains("dtrain_serving_queue_depth 1", StringComparison.Ordinal))
            Assert.False(queued.IsCompleted, "the queued request was answered while the inference thread was busy");
        // ... and the next is refused at once.
        var refused = await http.PostAsync("/v1/generate", JsonBody("""{"length": 5}"""));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Equal("1", refused.Headers.GetValues("Retry-After").Single());
        Assert.Contains("queue is full", await refused.Content.ReadAsStringAsync());
        // The long one's client goes away: generation stops at its next token and the queued one is answered.
        await abort.CancelAsync();
        running.Dispose();
        Assert.Equal(HttpStatusCode.OK, (await queued).StatusCode);

        var openApi = JsonDocument.Parse(await http.GetStringAsync("/openapi.json")).RootElement;
        Assert.StartsWith("3.", openApi.GetProperty("openapi").GetString());
        var paths = openApi.GetProperty("paths");
        Assert.True(paths.TryGetProperty("/v1/predict", out _));
        Assert.True(paths.TryGetProperty("/v1/generate", out _));
        var schemas = openApi.GetProperty("components").GetProperty("schemas");
        Assert.True(schemas.GetProperty("PredictRequest").GetProperty("properties").TryGetProperty("texts", out _));
        Assert.True(schemas.GetProperty("PredictRequest").GetProperty("properties").TryGetProperty("top_k", out _));
        Assert.True(schemas.GetProperty("GenerateRequest").GetProperty("properties").TryGetProperty("stream", out _));
        Assert.True(schemas.GetProperty("ErrorResponse").GetProperty("properties").TryGetProperty("field", out _));
    }

    [Fact]
    public async Task A_token_is_required_on_v1_when_given_and_a_bind_beyond_loopback_needs_tls_and_a_token()
    {
        await using var server = await Start(models.Classifier, o => o with { Token = "dtr_secret" });
        using var http = Client(server);
        var body = """{"texts": ["win money"]}""";
        var refused = await http.PostAsync("/v1/predict", JsonBody(body));
        Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
        // The answers' JSON is generated at build time (ServingJson): an error without a field has no "field" key.
        Assert.Equal("application/json; charset=utf-8", refused.Content.Headers.ContentType!.ToString());
        Assert.Equal("""{"error":"this server needs a token: send \u0022Authorization: Bearer TOKEN\u0022"}""", await refused.Content.ReadAsStringAsync());
        using var wrong = new HttpRequestMessage(HttpMethod.Post, "/v1/predict") { Content = JsonBody(body), Headers = { { "Authorization", "Bearer dtr_other" } } };
        Assert.Equal(HttpStatusCode.Unauthorized, (await http.SendAsync(wrong)).StatusCode);
        using var right = new HttpRequestMessage(HttpMethod.Post, "/v1/predict") { Content = JsonBody(body), Headers = { { "Authorization", "Bearer dtr_secret" } } };
        var answered = await http.SendAsync(right);
        Assert.Equal(HttpStatusCode.OK, answered.StatusCode);
        Assert.Matches("""^\{"predictions":\[\{"label":"[a-z]+","probability":[0-9.E-]+,"top":\[(\{"label":"[a-z]+","probability":[0-9.E-]+\},?)+\]\}\]\}$""", await answered.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health/ready")).StatusCode);

        var beyond = await Assert.ThrowsAsync<ArgumentException>(() => ModelServer.StartAsync(new ServingOptions { ModelPath = models.Classifier, Listen = "0.0.0.0", Port = 0, Token = "t" }));
        Assert.Contains("--listen 0.0.0.0 is beyond loopback", beyond.Message);
        Assert.Contains("--tls-dir", beyond.Message);
        var cli = CliRunner.Run(models.Dir, "serve-model", models.Classifier, "--listen", "0.0.0.0", "--port", "0");
        Assert.Equal(2, cli.ExitCode);
        Assert.Contains("beyond loopback", cli.Stderr);
    }

    [Fact]
    public async Task Sigterm_drains_a_request_in_flight_completes_and_the_server_exits_0()
    {
        var psi = CliRunner.StartInfo(models.Dir, null, "serve-model", models.CharLm, "--port", "0", "--max-length", "20000");
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            string? line;
            Uri? address = null;
            while ((line = await process.StandardOutput.ReadLineAsync()) is not null)
                if (Regex.Match(line, @"^serving .* on (http://\S+)$") is { Success: true } m)
                {
                    address = new Uri(m.Groups[1].Value);
                    break;
                }
            if (address is null) Assert.Fail($"the server did not start: {await stderr}");
            using var http = new HttpClient { BaseAddress = address };
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/generate") { Content = JsonBody("""{"length": 20000, "stream": true, "seed": 3}""") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            Assert.NotNull(await reader.ReadLineAsync()); // in flight: its first token arrived

            Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
            var rest = (await reader.ReadToEndAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            var last = JsonDocument.Parse(rest[^1]).RootElement;
            Assert.True(last.GetProperty("done").GetBoolean());
            Assert.Equal(20000, last.GetProperty("tokens").GetInt32());
            Assert.Equal(20000 - 1, rest.Length - 1);

            var output = await process.StandardOutput.ReadToEndAsync();
            await process.WaitForExitAsync();
            Assert.True(process.ExitCode == 0, $"exit {process.ExitCode}\n{output}\n{await stderr}");
            Assert.Contains("drained", output);
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }
}
