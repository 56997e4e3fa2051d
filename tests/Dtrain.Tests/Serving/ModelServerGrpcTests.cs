using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.RegularExpressions;
using Dtrain.Protos.Serving;
using Dtrain.Rpc;
using Dtrain.Serving;
using Dtrain.Tests.Security;
using Dtrain.Tests.Support;
using Grpc.Core;
using Grpc.Net.Client;
using GenerateRequest = Dtrain.Protos.Serving.GenerateRequest;
using PredictRequest = Dtrain.Protos.Serving.PredictRequest;

namespace Dtrain.Tests.Serving;

/// <summary>
/// `dtrain serve-model`'s gRPC service (protos/dtrain/serving.proto) on its own port, over real sockets: its answers equal
/// the HTTP/JSON ones, bad requests are InvalidArgument naming the field, it shares the HTTP routes' batches and metrics,
/// needs the token over TLS beyond loopback, and SIGTERM drains a streaming call.
/// </summary>
public sealed class ModelServerGrpcTests(ServingModels models) : IClassFixture<ServingModels>
{
    static readonly string[] Texts = ["win money now offer 3", "meeting notes for project 8", "win", "", "notes notes money zebra"];

    static async Task<ModelServer> Start(string model, Func<ServingOptions, ServingOptions>? with = null)
    {
        var options = new ServingOptions { ModelPath = model, Port = 0, GrpcPort = 0 };
        var server = await ModelServer.StartAsync(with?.Invoke(options) ?? options);
        await server.Loaded;
        return server;
    }

    static ModelServing.ModelServingClient Client(GrpcChannel channel) => new(channel);

    static PredictRequest Predict(IEnumerable<string> texts, int? topK = null)
    {
        var r = new PredictRequest();
        r.Texts.AddRange(texts);
        if (topK is { } k) r.TopK = k;
        return r;
    }

    [Fact]
    public void The_grpc_port_is_8601_or_any_free_port_beside_port_0_and_never_the_http_port()
    {
        Assert.Equal(8601, new ServingOptions { ModelPath = "m" }.GrpcPortToBind);
        Assert.Equal(0, new ServingOptions { ModelPath = "m", Port = 0 }.GrpcPortToBind);
        Assert.Equal(9001, new ServingOptions { ModelPath = "m", Port = 0, GrpcPort = 9001 }.GrpcPortToBind);
        var same = Assert.Throws<ArgumentException>(() => new ServingOptions { ModelPath = "m", Port = 8601 }.Validate());
        Assert.Contains("--grpc-port 8601 is also --port", same.Message);
        Assert.Contains("--grpc-port 70000 is out of range", Assert.Throws<ArgumentException>(() => new ServingOptions { ModelPath = "m", GrpcPort = 70000 }.Validate()).Message);
    }

    [Fact]
    public async Task Grpc_predict_and_generate_equal_the_http_answers()
    {
        await using (var server = await Start(models.Classifier))
        {
            Assert.NotEqual(server.Address.Port, server.GrpcAddress.Port);
            using var http = new HttpClient { BaseAddress = server.Address };
            var json = (await (await http.PostAsJsonAsync("/v1/predict", new { texts = Texts, top_k = 2 })).Content.ReadFromJsonAsync<PredictResponse>())!;
            using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
            var reply = await Client(channel).PredictAsync(Predict(Texts, 2));
            Assert.Equal(Texts.Length, reply.Predictions.Count);
            for (var i = 0; i < Texts.Length; i++)
            {
                Assert.Equal(json.Predictions[i].Label, reply.Predictions[i].Label);
                Assert.Equal(json.Predictions[i].Probability, reply.Predictions[i].Probability, 1e-12);
                Assert.Equal(json.Predictions[i].Top.Select(t => t.Label), reply.Predictions[i].Top.Select(t => t.Label));
                Assert.Equal(json.Predictions[i].Top.Select(t => t.Probability), reply.Predictions[i].Top.Select(t => t.Probability), (a, b) => Math.Abs(a - b) < 1e-12);
            }
            // top_k unset: 3 labels (the model has 3), as over HTTP.
            Assert.Equal(3, (await Client(channel).PredictAsync(Predict(["win"]))).Predictions[0].Top.Count);
        }

        await using (var server = await Start(models.WordLm))
        {
            using var http = new HttpClient { BaseAddress = server.Address };
            var json = (await (await http.PostAsJsonAsync("/v1/generate", new { prompt = "the cat", length = 25, temperature = 0.9, top_k = 5, seed = 42 })).Content.ReadFromJsonAsync<GenerateResponse>())!;
            using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
            var request = new GenerateRequest { Prompt = "the cat", Length = 25, Temperature = 0.9, TopK = 5, Seed = 42 };
            var whole = await Client(channel).GenerateAsync(request);
            Assert.Equal(json.Text, whole.Text);
            Assert.Equal(25, whole.Tokens);

            using var call = Client(channel).GenerateStream(request);
            var chunks = new List<GenerateChunk>();
            await foreach (var chunk in call.ResponseStream.ReadAllAsync()) chunks.Add(chunk);
            Assert.Equal(25 + 1, chunks.Count);
            Assert.All(chunks.Take(25), c => Assert.False(c.Done));
            Assert.Equal(json.Text, string.Concat(chunks.Take(25).Select(c => c.Text)));
            Assert.True(chunks[^1].Done);
            Assert.Equal(json.Text, chunks[^1].Text);
            Assert.Equal(25, chunks[^1].Tokens);

            // Temperature 0 is a value, not "unset" (proto3 optional): greedy, as "temperature": 0 over HTTP.
            var greedyJson = (await (await http.PostAsJsonAsync("/v1/generate", new { length = 10, temperature = 0 })).Content.ReadFromJsonAsync<GenerateResponse>())!;
            Assert.Equal(greedyJson.Text, (await Client(channel).GenerateAsync(new GenerateRequest { Length = 10, Temperature = 0 })).Text);
        }
    }

    [Fact]
    public async Task Bad_grpc_requests_are_invalid_argument_naming_the_field_and_the_wrong_method_unimplemented()
    {
        await using (var server = await Start(models.Classifier))
        {
            using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
            var client = Client(channel);
            foreach (var (request, field) in new[]
                     {
                         (Predict([]), "texts"),
                         (Predict(["a", new string('x', ServingModels.ClassifierMaxLength + 1)]), "texts[1]"),
                         (Predict(["a"], 0), "top_k"),
                         (Predict(["a"], 4), "top_k"),
                     })
            {
                var e = await Assert.ThrowsAsync<RpcException>(() => client.PredictAsync(request).ResponseAsync);
                Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
                Assert.StartsWith(field + " ", e.Status.Detail);
                Assert.Equal(field, e.Trailers.GetValue("field"));
            }
            var wrong = await Assert.ThrowsAsync<RpcException>(() => client.GenerateAsync(new GenerateRequest()).ResponseAsync);
            Assert.Equal(StatusCode.Unimplemented, wrong.StatusCode);
            Assert.Contains("use Predict", wrong.Status.Detail);
        }

        await using (var server = await Start(models.CharLm, o => o with { MaxGenerateLength = 50 }))
        {
            using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
            var client = Client(channel);
            foreach (var (request, field) in new[]
                     {
                         (new GenerateRequest { Length = 0 }, "length"),
                         (new GenerateRequest { Length = 51 }, "length"),
                         (new GenerateRequest { Temperature = -1 }, "temperature"),
                         (new GenerateRequest { Temperature = double.NaN }, "temperature"),
                         (new GenerateRequest { TopK = -1 }, "top_k"),
                         (new GenerateRequest { Prompt = new string('a', 2001) }, "prompt"),
                     })
            {
                var e = await Assert.ThrowsAsync<RpcException>(() => client.GenerateAsync(request).ResponseAsync);
                Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
                Assert.StartsWith(field + " ", e.Status.Detail);
                Assert.Equal(field, e.Trailers.GetValue("field"));
                // The streaming call refuses it the same way, before any chunk.
                using var call = client.GenerateStream(request);
                var s = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
                Assert.Equal(StatusCode.InvalidArgument, s.StatusCode);
            }
            var wrong = await Assert.ThrowsAsync<RpcException>(() => client.PredictAsync(Predict(["a"])).ResponseAsync);
            Assert.Equal(StatusCode.Unimplemented, wrong.StatusCode);
        }
    }

    [Fact]
    public async Task Grpc_and_http_clients_share_the_batches_and_the_metrics()
    {
        await using var server = await Start(models.Classifier, o => o with { MaxBatch = 32, MaxWaitMs = 20 });
        using var http = new HttpClient { BaseAddress = server.Address };
        using var channel = GrpcChannel.ForAddress(server.GrpcAddress);
        var client = Client(channel);
        var alone = new Dictionary<string, PredictReply>();
        foreach (var t in Texts) alone[t] = await client.PredictAsync(Predict([t], 3));

        const int perClient = 12;
        await Task.WhenAll(Enumerable.Range(0, 16).Select(c => Task.Run(async () =>
        {
            for (var i = 0; i < perClient; i++)
            {
                var text = Texts[(c + i) % Texts.Length];
                var expected = alone[text].Predictions[0];
                if (c % 2 == 0)
                {
                    var p = (await client.PredictAsync(Predict([text], 3))).Predictions.Single();
                    Assert.Equal(expected.Label, p.Label);
                    Assert.Equal(expected.Top.Select(t => t.Probability), p.Top.Select(t => t.Probability), (a, b) => Math.Abs(a - b) < 1e-5);
                }
                else
                {
                    var response = await http.PostAsJsonAsync("/v1/predict", new { texts = new[] { text }, top_k = 3 });
                    Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                    var p = (await response.Content.ReadFromJsonAsync<PredictResponse>())!.Predictions.Single();
                    Assert.Equal(expected.Label, p.Label);
                    Assert.Equal(expected.Top.Select(t => t.Probability), p.Top.Select(t => t.Probability), (a, b) => Math.Abs(a - b) < 1e-5);
                }
            }
        })));
        await Assert.ThrowsAsync<RpcException>(() => client.PredictAsync(Predict([])).ResponseAsync);

        var metrics = await http.GetStringAsync("/metrics");
        Assert.Equal(8 * perClient + Texts.Length, Metric(metrics, "dtrain_serving_requests_total{route=\"/dtrain.serving.v1.ModelServing/Predict\",status=\"OK\"}"));
        Assert.Equal(1, Metric(metrics, "dtrain_serving_requests_total{route=\"/dtrain.serving.v1.ModelServing/Predict\",status=\"InvalidArgument\"}"));
        Assert.Equal(8 * perClient, Metric(metrics, "dtrain_serving_requests_total{route=\"/v1/predict\",status=\"200\"}"));
        var passes = Metric(metrics, "dtrain_serving_batch_size_count");
        Assert.True(passes < 16 * perClient + Texts.Length, $"{passes} forward passes for {16 * perClient + Texts.Length} requests: none was batched\n{metrics}");
        Assert.Contains("dtrain_serving_request_duration_seconds_bucket{route=\"/dtrain.serving.v1.ModelServing/Predict\"", metrics);
    }

    static double Metric(string text, string name)
    {
        var line = text.Split('\n').FirstOrDefault(l => l.StartsWith(name + " ", StringComparison.Ordinal)) ?? throw new Xunit.Sdk.XunitException($"no {name} in\n{text}");
        return double.Parse(line[(name.Length + 1)..], CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task Beyond_loopback_grpc_is_served_over_tls_and_refused_without_the_token()
    {
        using var pki = new TestPki();
        await using var server = await Start(models.Classifier, o => o with
        {
            Listen = "0.0.0.0", Certificate = pki.Issue("model-server", ClusterRoles.Coordinator), Token = "dtr_secret",
        });
        Assert.Equal("https", server.GrpcAddress.Scheme);
        using var channel = pki.Channel(server.GrpcAddress.ToString(), null);
        var client = Client(channel);
        var none = await Assert.ThrowsAsync<RpcException>(() => client.PredictAsync(Predict(["win money"])).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, none.StatusCode);
        Assert.Contains("needs a token", none.Status.Detail);
        var other = await Assert.ThrowsAsync<RpcException>(() => client.PredictAsync(Predict(["win money"]), new Metadata { { "authorization", "Bearer dtr_other" } }).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, other.StatusCode);
        Assert.Contains("not valid", other.Status.Detail);
        var reply = await client.PredictAsync(Predict(["win money"]), new Metadata { { "authorization", "Bearer dtr_secret" } });
        Assert.Single(reply.Predictions);

        // Plaintext to the TLS port is not answered.
        using var plain = GrpcChannel.ForAddress(new UriBuilder(server.GrpcAddress) { Scheme = "http" }.Uri);
        var refused = await Assert.ThrowsAsync<RpcException>(() => Client(plain).PredictAsync(Predict(["win"]), new Metadata { { "authorization", "Bearer dtr_secret" } }).ResponseAsync);
        Assert.NotEqual(StatusCode.OK, refused.StatusCode);
    }

    [Fact]
    public async Task The_typed_client_of_dtrain_client_predicts_and_generates_over_tls_with_the_token()
    {
        using var pki = new TestPki();
        var certificate = pki.Issue("model-server", ClusterRoles.Coordinator);
        await using (var server = await Start(models.Classifier, o => o with { Listen = "0.0.0.0", Certificate = certificate, Token = "dtr_secret" }))
        {
            using var http = new HttpClient(new SocketsHttpHandler { SslOptions = { RemoteCertificateValidationCallback = (_, _, _, _) => true } }) { BaseAddress = server.Address };
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/predict") { Content = JsonContent.Create(new { texts = Texts, top_k = 2 }), Headers = { { "Authorization", "Bearer dtr_secret" } } };
            var json = (await (await http.SendAsync(request)).Content.ReadFromJsonAsync<PredictResponse>())!;
            var tls = new TlsSettings { Ca = pki.CaPath };
            using var client = new Dtrain.Client.ModelServingClient(new() { Address = server.GrpcAddress.ToString(), Token = "dtr_secret", Tls = tls });
            var predictions = await client.PredictAsync(Texts, topK: 2);
            Assert.Equal(json.Predictions.Select(p => (p.Label, p.Top.Count)), predictions.Select(p => (p.Label, p.Top.Count)));
            using var anonymous = new Dtrain.Client.ModelServingClient(new() { Address = server.GrpcAddress.ToString(), Tls = tls });
            Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => anonymous.PredictAsync(["win"]))).StatusCode);
        }
        await using (var server = await Start(models.CharLm))
        {
            using var client = new Dtrain.Client.ModelServingClient(new() { Address = server.GrpcAddress.ToString() });
            var whole = await client.GenerateAsync("the ", length: 40, temperature: 0.9, topK: 5, seed: 7);
            var pieces = new List<string>();
            await foreach (var piece in client.GenerateStreamAsync("the ", length: 40, temperature: 0.9, topK: 5, seed: 7)) pieces.Add(piece);
            Assert.Equal(40, pieces.Count);
            Assert.Equal(whole, string.Concat(pieces));
        }
        var plain = Assert.Throws<ArgumentException>(() => new Dtrain.Client.ModelServingClient(new() { Address = "http://10.1.2.3:8601", Token = "t" }));
        Assert.Contains("refusing to send the token unencrypted", plain.Message);
    }

    [Fact]
    public async Task Sigterm_drains_a_grpc_stream_in_flight_and_the_server_exits_0()
    {
        var psi = CliRunner.StartInfo(models.Dir, null, "serve-model", models.CharLm, "--port", "0", "--grpc-port", "0", "--max-length", "20000");
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            string? line;
            Uri? address = null;
            while ((line = await process.StandardOutput.ReadLineAsync()) is not null)
                if (Regex.Match(line, @"^gRPC \(Generate, GenerateStream\) on (http://\S+)$") is { Success: true } m)
                {
                    address = new Uri(m.Groups[1].Value);
                    break;
                }
            if (address is null) Assert.Fail($"the server did not start: {await stderr}");
            using var channel = GrpcChannel.ForAddress(address);
            using var call = Client(channel).GenerateStream(new GenerateRequest { Length = 20000, Seed = 3 });
            Assert.True(await call.ResponseStream.MoveNext()); // in flight: its first token arrived

            Process.Start("kill", ["-TERM", process.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
            var chunks = 1;
            GenerateChunk? last = null;
            while (await call.ResponseStream.MoveNext())
            {
                chunks++;
                last = call.ResponseStream.Current;
            }
            Assert.NotNull(last);
            Assert.True(last.Done);
            Assert.Equal(20000, last.Tokens);
            Assert.Equal(20000 + 1, chunks);
            Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);

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
