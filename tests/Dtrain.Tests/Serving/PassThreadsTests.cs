using System.Net;
using System.Net.Http.Json;
using System.Text.RegularExpressions;
using Dtrain.Serving;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Serving;

/// <summary>
/// `serve-model --threads auto`: each forward pass's torch threads chosen from its size — 1 for a small pass (a small
/// model, or few texts), every core for a large one — and a fixed --threads N as before.
/// </summary>
[Collection(Alone)] // its servers run passes on 2 torch threads: no other test's float sums beside them
public sealed class PassThreadsTests(ServingModels models) : IClassFixture<ServingModels>, IDisposable
{
    public const string Alone = "torch threads above 1";

    /// <summary>
    /// libtorch makes the last thread count set the default of threads that run torch for the first time later: back to
    /// the suite's 1 (TestEnvironment), or a later test's new threads would sum floats on 2 (PipelineEquivalenceTests
    /// then differed from one process in the last bits).
    /// </summary>
    public void Dispose() => TorchSharp.torch.set_num_threads(1);

    static ModelSpec Lstm(int embedding, int hidden, int layers = 1, bool bidirectional = true) =>
        new() { Cell = CellKinds.Lstm, EmbeddingDim = embedding, HiddenSize = hidden, Layers = layers, Bidirectional = bidirectional };

    [Fact]
    public void A_pass_costs_gates_times_hidden_times_input_plus_hidden_per_token_layer_and_direction()
    {
        // spam-lstm's size: 4 gates x 96 x (64 + 96) x 2 directions per token.
        Assert.Equal(4L * 96 * 160 * 2, PassThreads.Work(Lstm(64, 96), 1));
        Assert.Equal(4L * 96 * 160 * 2 * 1280, PassThreads.Work(Lstm(64, 96), 1280));
        // A second layer reads both directions of the first: its input is 2 x hidden.
        Assert.Equal(4L * 96 * 160 * 2 + 4L * 96 * (192 + 96) * 2, PassThreads.Work(Lstm(64, 96, layers: 2), 1));
        Assert.Equal(3L * 16 * (8 + 16), PassThreads.Work(new ModelSpec { Cell = CellKinds.Gru, EmbeddingDim = 8, HiddenSize = 16, Layers = 1 }, 1));
        Assert.Equal(1L * 16 * (8 + 16), PassThreads.Work(new ModelSpec { Cell = CellKinds.Rnn, EmbeddingDim = 8, HiddenSize = 16, Layers = 1 }, 1));
        Assert.Equal(0, PassThreads.Work(Lstm(64, 96), 0));
    }

    [Theory]
    // Measured on the project's 2-core machine (docs/benchmarks.md): in the server 2 threads cost spam-lstm's and 128x256's
    // requests/s at batch 32 and raised 256x512's; the line is 1.5 billion multiply-adds a pass (256x512 from 12 texts of 40 words).
    [InlineData(64, 96, 1, 40, 1)]
    [InlineData(64, 96, 32, 40, 1)]
    [InlineData(128, 256, 1, 40, 1)]
    [InlineData(128, 256, 32, 40, 1)]
    [InlineData(128, 256, 64, 40, 2)]
    [InlineData(256, 512, 1, 40, 1)]
    [InlineData(256, 512, 11, 40, 1)]
    [InlineData(256, 512, 12, 40, 2)]
    [InlineData(256, 512, 32, 40, 2)]
    public void Auto_runs_small_passes_on_one_thread_and_large_ones_on_every_core(int embedding, int hidden, int texts, int words, int expected)
    {
        Assert.Equal(expected, PassThreads.For(Lstm(embedding, hidden), (long)texts * words, cores: 2));
        // With one core there is nothing to spread over; with 8, a large pass takes all 8.
        Assert.Equal(1, PassThreads.For(Lstm(embedding, hidden), (long)texts * words, cores: 1));
        Assert.Equal(expected == 1 ? 1 : 8, PassThreads.For(Lstm(embedding, hidden), (long)texts * words, cores: 8));
    }

    [Theory]
    [InlineData("auto", null)]
    [InlineData("AUTO", null)]
    [InlineData("1", 1)]
    [InlineData("4", 4)]
    [InlineData("256", 256)]
    public void Threads_takes_auto_or_a_number(string value, int? expected) => Assert.Equal(expected, ServingOptions.ParseThreads(value));

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("257")]
    [InlineData("two")]
    [InlineData("")]
    [InlineData("2.5")]
    public void A_bad_threads_value_is_refused_naming_it(string value)
    {
        var e = Assert.Throws<ArgumentException>(() => ServingOptions.ParseThreads(value));
        Assert.Equal($"--threads \"{value}\" is not auto or a number of torch threads from 1 to 256", e.Message);
    }

    /// <summary>The server's passes by torch threads, from its /metrics.</summary>
    static async Task<Dictionary<string, double>> Passes(HttpClient http)
    {
        var text = await http.GetStringAsync("/metrics");
        return Regex.Matches(text, @"(?m)^dtrain_serving_passes_total\{threads=""(\d+)""\} ([0-9.e+]+)$")
            .ToDictionary(m => m.Groups[1].Value, m => double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    [Theory]
    // auto, the tiny test classifier: every pass far under the threshold runs on one thread.
    [InlineData(null, 2, long.MaxValue, "1")]
    // auto with the threshold at one multiply-add: every pass is "large" and takes the 2 cores.
    [InlineData(null, 2, 1L, "2")]
    // A fixed --threads runs every pass on it, whatever its size.
    [InlineData(3, 2, 1L, "3")]
    public async Task The_inference_thread_runs_each_pass_on_the_threads_chosen_for_it(int? threads, int cores, long parallelWork, string expected)
    {
        await using var server = await ModelServer.StartAsync(new ServingOptions { ModelPath = models.Classifier, Port = 0, Threads = threads, Cores = cores, ParallelWork = parallelWork });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.Address };
        for (var i = 0; i < 3; i++)
            Assert.Equal(HttpStatusCode.OK, (await http.PostAsJsonAsync("/v1/predict", new { texts = new[] { "win money now", "meeting notes" } })).StatusCode);
        var passes = await Passes(http);
        Assert.Equal(expected, Assert.Single(passes).Key);
        Assert.Equal(3, passes[expected]);
    }

    [Fact]
    public async Task Generation_steps_are_counted_by_their_threads_too()
    {
        await using var server = await ModelServer.StartAsync(new ServingOptions { ModelPath = models.CharLm, Port = 0, Cores = 2, ParallelWork = 1 });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.Address };
        Assert.Equal(HttpStatusCode.OK, (await http.PostAsJsonAsync("/v1/generate", new { prompt = "the ", length = 5 })).StatusCode);
        // The first token is drawn reading the prompt; each of the 4 others is one step of the generations running.
        Assert.Equal(new Dictionary<string, double> { ["2"] = 4 }, await Passes(http));
    }

    [Fact]
    public async Task Serve_model_defaults_to_auto_says_so_and_refuses_a_bad_threads_value()
    {
        var (ready, output) = CliRunner.RunUntil(models.Dir, TimeSpan.FromMinutes(2), null, line => line.StartsWith("gRPC", StringComparison.Ordinal), "serve-model", models.Classifier, "--port", "0");
        Assert.True(ready, output.ToString());
        Assert.Contains($"inference: torch threads auto: 1 for a forward pass under 1500 million multiply-adds, {Environment.ProcessorCount} (the CPUs) for a larger one\n", output.Stdout);

        var bad = CliRunner.Run(models.Dir, "serve-model", models.Classifier, "--port", "0", "--threads", "many");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--threads \"many\" is not auto or a number of torch threads from 1 to 256", bad.Stderr);
    }
}

/// <summary>Runs <see cref="PassThreadsTests"/> with no other test beside it (see its <see cref="PassThreadsTests.Dispose"/>).</summary>
[CollectionDefinition(PassThreadsTests.Alone, DisableParallelization = true)]
public sealed class PassThreadsAloneCollection;
