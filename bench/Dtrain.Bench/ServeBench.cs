using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Runtime;
using Dtrain.Serving;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>
/// `dtrain-bench serve`: the model server (`dtrain serve-model`) on loopback under load — requests per second and p50/p99
/// latency at --max-batch 1 against dynamic batching, both at concurrency 32, then --total requests from 64 concurrent
/// clients, none of which may be lost or fail. Beside them, to show where the time goes: the same dynamic batching over
/// gRPC (protobuf instead of JSON, HTTP/2), and the forward passes alone in-process (no server: texts/s at batch 1 and at
/// --max-batch with the server's --threads, the most batching can gain). The model: a bidirectional LSTM
/// classifier with word tokens and untrained weights (the cost of a forward pass does not depend on them) of each size in
/// --sizes (embedding x hidden [x layers]; default spam-lstm's 64x96, examples/spam-lstm.json, then larger ones), or of
/// --embedding/--hidden/--layers, or --model PATH. The first size gets every line above; each further size the forward
/// passes alone and the two loads at concurrency 32; at the end one line per size with both ratios, so a user sees from
/// which size dynamic batching gives 5x here.
/// </summary>
internal static class ServeBench
{
    public const string Usage = "dtrain-bench serve [--requests N (2000)] [--total N (10000)] [--max-batch N (32)] [--max-wait-ms N (5)] [--words N (40)] " +
                                "[--vocab N (2000)] [--threads auto|N (auto): torch threads of the server's inference thread and of the forward passes alone, serve-model --threads] [--texts FILE (JSONL with a \"text\" field per line if it ends in .jsonl, else one text per line)] " +
                                "[--sizes EMBxHIDDEN[xLAYERS],... (64x96,128x256,256x512) | --embedding N (64) --hidden N (96) --layers N (1) | --model PATH]";

    /// <summary>A bidirectional LSTM classifier's size: embedding, hidden units per direction, layers.</summary>
    internal sealed record Size(int Embedding, int Hidden, int Layers)
    {
        public static readonly Size Spam = new(64, 96, 1);

        public override string ToString() => Layers == 1 ? $"{Embedding}x{Hidden}" : $"{Embedding}x{Hidden}x{Layers}";

        /// <summary>"64x96,256x512x2": sizes as --sizes takes them; anything else is an ArgumentException naming the item.</summary>
        public static Size[] ParseList(string text) => [.. text.Split(',').Select(item =>
        {
            var parts = item.Split('x');
            if (parts.Length is < 2 or > 3) throw new ArgumentException($"--sizes: \"{item}\" is not EMBEDDINGxHIDDEN or EMBEDDINGxHIDDENxLAYERS (e.g. 64x96, 256x512x2) (usage: {Usage})");
            return new Size(BenchArgs.Number("--sizes embedding", parts[0], 1, 4096, Usage), BenchArgs.Number("--sizes hidden", parts[1], 1, 4096, Usage),
                parts.Length == 3 ? BenchArgs.Number("--sizes layers", parts[2], 1, 16, Usage) : 1);
        })];
    }

    public static int Run(string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        if (Environment.GetEnvironmentVariable(ChildVariable) is null) return InDtrainSettings(args);
        BenchArgs.CheckOptions(args, Usage, "--requests", "--total", "--max-batch", "--max-wait-ms", "--words", "--vocab", "--texts", "--sizes", "--embedding", "--hidden", "--layers", "--model", "--threads");
        var requests = Number(args, "--requests", 2000, 1, 10_000_000);
        var total = Number(args, "--total", 10_000, 1, 10_000_000);
        var maxBatch = Number(args, "--max-batch", 32, 2, 4096);
        var maxWait = Number(args, "--max-wait-ms", 5, 0, 10_000);
        var words = Number(args, "--words", 40, 1, 1000);
        var vocab = Number(args, "--vocab", 2000, 1, 1_000_000);
        torchThreads = BenchArgs.Option(args, "--threads") is { } t ? ServingOptions.ParseThreads(t) : null;
        var single = new[] { "--embedding", "--hidden", "--layers" }.Any(o => BenchArgs.Option(args, o) is not null);
        var given = BenchArgs.Option(args, "--model");
        if (new[] { single, BenchArgs.Option(args, "--sizes") is not null, given is not null }.Count(b => b) > 1)
            throw new ArgumentException($"--sizes, --embedding/--hidden/--layers and --model: give one of them (usage: {Usage})");
        if (given is not null && BenchArgs.Option(args, "--vocab") is not null) throw new ArgumentException($"--vocab is for the built classifiers, not --model (usage: {Usage})");
        Size[] sizes = single
            ? [new(Number(args, "--embedding", Size.Spam.Embedding, 1, 4096), Number(args, "--hidden", Size.Spam.Hidden, 1, 4096), Number(args, "--layers", Size.Spam.Layers, 1, 16))]
            : Size.ParseList(BenchArgs.Option(args, "--sizes") ?? "64x96,128x256,256x512");
        var textsFile = BenchArgs.Option(args, "--texts");
        if (textsFile is not null && BenchArgs.Option(args, "--words") is not null) throw new ArgumentException($"--texts and --words: give one of them (usage: {Usage})");
        if (textsFile is not null && BenchArgs.Option(args, "--vocab") is not null)
            throw new ArgumentException($"--vocab is for the synthetic texts of --words: with --texts the vocabulary is fitted on the texts (usage: {Usage})");
        using var tmp = new TempDirectory();
        var texts = textsFile is null ? Texts(words, 256, vocab) : ReadTexts(textsFile);
        (string Name, string Path)[] models = given is not null ? [(Name: given, Path: given)]
            : sizes.Select(s => (Name: $"size {s}", Path: Classifier(Path.Combine(tmp.Path, s.ToString()), s, vocab, textsFile is null ? null : texts))).ToArray();
        var vocabulary = textsFile is null ? $"word vocabulary {vocab}" : "word vocabulary fitted on the texts";
        Console.WriteLine($"serve: {(given ?? $"bidirectional LSTM classifiers ({vocabulary}) of embedding x hidden [x layers] {string.Join(", ", sizes)}")}, " +
                          $"{(textsFile is null ? $"texts of {words} words" : Lengths(textsFile, texts))}, loopback HTTP/1.1 (and gRPC), {Environment.ProcessorCount} CPUs, {Threads()} for inference (both servers), the clients in a process of their own; " +
                          $"serve-model's process settings: tiered compilation {(Environment.GetEnvironmentVariable("DOTNET_TieredCompilation") == "0" ? "off" : "on")}, {NativeAllocator.Describe()}");

        var summary = new List<string>();
        for (var m = 0; m < models.Length; m++)
        {
            var (name, model) = models[m];
            var prefix = m == 0 ? "" : $"{name}: ";
            if (m == 0 && given is null) Console.WriteLine($"{name} (embedding {sizes[0].Embedding}, hidden {sizes[0].Hidden}, {sizes[0].Layers} layer{(sizes[0].Layers == 1 ? "" : "s")}):");
            var (alone1, aloneN) = ForwardOnly(model, texts, maxBatch, requests);
            Console.WriteLine(prefix + string.Create(CultureInfo.InvariantCulture,
                $"forward passes alone (no server, {Threads()}): batch 1 {alone1.PerSecond:F0} texts/s, batch {maxBatch} {aloneN.PerSecond:F0} texts/s: {aloneN.PerSecond / alone1.PerSecond:F2}x, the most batching can gain; " +
                $"per CPU second (what a loaded machine does not inflate): {alone1.PerCpuSecond:F0} and {aloneN.PerCpuSecond:F0} texts, {aloneN.PerCpuSecond / alone1.PerCpuSecond:F2}x"));
            var one = Load(model, 1, 0, texts, requests, 32);
            Console.WriteLine(prefix + one.Line("max-batch 1, concurrency 32"));
            var batched = Load(model, maxBatch, maxWait, texts, requests, 32);
            Console.WriteLine(prefix + batched.Line($"max-batch {maxBatch}, max-wait {maxWait} ms, concurrency 32"));
            var speedup = batched.PerSecond / one.PerSecond;
            var tail = batched.P99 / batched.P50;
            Console.WriteLine(prefix + $"dynamic batching: {speedup:F2}x the requests/s of max-batch 1 (target >= 5x: {(speedup >= 5 ? "met" : "NOT met")}); " +
                              $"p99/p50 {tail:F2} (target <= 3: {(tail <= 3 ? "met" : "NOT met")})");
            summary.Add(string.Create(CultureInfo.InvariantCulture,
                $"{name}: forward passes alone batch {maxBatch} / batch 1 {aloneN.PerSecond / alone1.PerSecond:F2}x ({aloneN.PerCpuSecond / alone1.PerCpuSecond:F2}x per CPU second); " +
                $"server dynamic batching / max-batch 1 {speedup:F2}x ({batched.PerCpuSecond / one.PerCpuSecond:F2}x per CPU second; {one.CpuPerRequest * 1e3:F2} and {batched.CpuPerRequest * 1e3:F2} ms CPU and {one.KbPerRequest:F1} and {batched.KbPerRequest:F1} KB allocated per request in the server), " +
                $"p99/p50 {tail:F2}: {(speedup >= 5 && tail <= 3 ? "met" : "NOT met")}"));
            if (m > 0) continue;
            var grpc = LoadGrpc(model, maxBatch, maxWait, texts, requests, 32);
            Console.WriteLine(grpc.Line($"gRPC: max-batch {maxBatch}, max-wait {maxWait} ms, concurrency 32") + string.Create(CultureInfo.InvariantCulture, $" ({grpc.PerSecond / one.PerSecond:F2}x HTTP's max-batch 1)"));
            var many = Load(model, maxBatch, maxWait, texts, total, 64);
            Console.WriteLine(many.Line($"{total} requests from 64 clients"));
            if (many.Failed > 0 || many.Answered != total)
                throw new BenchFailureException($"{total} requests from 64 clients: {many.Answered} answered, {many.Failed} failed or lost");
            Console.WriteLine($"none lost or failed: {many.Answered} of {total} answered 200 with one prediction each");
        }
        Console.WriteLine($"by size (target: dynamic batching >= 5x the requests/s of max-batch 1 at concurrency 32, p99 <= 3x p50):");
        foreach (var line in summary) Console.WriteLine("  " + line);
        return 0;
    }

    const string ChildVariable = "DTRAIN_BENCH_SERVE_CHILD";

    /// <summary>
    /// Runs the bench again in a child process with `dtrain serve-model`'s process settings (no tiered compilation, as
    /// src/Cli/Dtrain.Cli.csproj; tcmalloc preloaded where installed), as `dtrain-bench recurrent` does: with the bench's
    /// default tiering the short timed loads ran partly on unoptimised code being re-compiled in the background, a cost
    /// the server does not have (docs/benchmarks.md).
    /// </summary>
    static int InDtrainSettings(string[] args) => CollectiveBench.InDtrainSettings("serve", ChildVariable, args);

    /// <summary>A load's result: <paramref name="CpuSeconds"/> and <paramref name="Allocated"/> are the server's process, <paramref name="ClientCpuSeconds"/> the clients'.</summary>
    sealed record Result(int Answered, int Failed, double Seconds, double P50, double P99, double MeanBatch, double CpuSeconds, double ClientCpuSeconds, long Allocated, double QueueWait, double Pass, double QueueWaitP99, double PassP99)
    {
        public double KbPerRequest => Allocated / 1024.0 / Math.Max(1, Answered);
        public double PerSecond => Answered / Seconds;
        public double PerCpuSecond => Answered / CpuSeconds;
        public double CpuPerRequest => CpuSeconds / Math.Max(1, Answered);
        public double ClientCpuPerRequest => ClientCpuSeconds / Math.Max(1, Answered);

        public string Line(string what) => string.Create(CultureInfo.InvariantCulture,
            $"{what}: {PerSecond:F0} requests/s, p50 {P50 * 1e3:F1} ms, p99 {P99 * 1e3:F1} ms, mean batch {MeanBatch:F1} texts ({Answered} answered, {Failed} failed); " +
            $"in the server: queue wait mean {QueueWait * 1e3:F2} ms, p99 <= {QueueWaitP99 * 1e3:F1} ms, forward pass mean {Pass * 1e3:F2} ms, p99 <= {PassP99 * 1e3:F1} ms; " +
            $"{CpuPerRequest * 1e3:F2} ms CPU per request in the server, {ClientCpuPerRequest * 1e3:F2} in the clients");
    }

    static Result Load(string model, int maxBatch, int maxWait, string[] texts, int count, int clients) => LoadAsync(model, maxBatch, maxWait, texts, count, clients).GetAwaiter().GetResult();

    static async Task<Result> LoadAsync(string model, int maxBatch, int maxWait, string[] texts, int count, int clients)
    {
        await using var server = await ModelServer.StartAsync(new ServingOptions
        {
            ModelPath = model, Port = 0, GrpcPort = 0, MaxBatch = maxBatch, MaxWaitMs = maxWait, QueueCapacity = Math.Max(1024, clients * 2), Threads = torchThreads,
        });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.Address };
        return await RunLoad(http, server.Address, "http", texts, count, clients);
    }

    /// <summary>
    /// Sends <paramref name="count"/> requests from <paramref name="clients"/> concurrent clients in a process of their
    /// own (`dtrain-bench serve-clients`, <see cref="Clients"/>), as the issue's outside client does: the server's process
    /// only serves. The clients send 20 warm-up requests (the first pay for JIT and torch's first allocations; each must be
    /// answered), then the timed ones: requests/s, p50/p99 latency, the server's CPU and the clients', and the server's mean
    /// batch, queue wait and pass over the timed requests, from its /metrics (read through <paramref name="http"/>).
    /// </summary>
    static async Task<Result> RunLoad(HttpClient http, Uri address, string protocol, string[] texts, int count, int clients)
    {
        var textsFile = Path.GetTempFileName();
        await File.WriteAllTextAsync(textsFile, JsonSerializer.Serialize(texts));
        try
        {
            var (exe, prefix) = CollectiveBench.SelfCommand();
            var psi = new ProcessStartInfo(exe, prefix) { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true };
            foreach (var a in new[] { "serve-clients", address.ToString(), protocol, textsFile, count.ToString(CultureInfo.InvariantCulture), clients.ToString(CultureInfo.InvariantCulture) })
                psi.ArgumentList.Add(a);
            using var child = Process.Start(psi) ?? throw new BenchFailureException("could not start the clients' process");
            try
            {
                var warm = await child.StandardOutput.ReadLineAsync();
                if (warm != "warm") throw new BenchFailureException($"the clients' process did not warm up: {warm ?? "it exited"}");
                var before = ServerStats(await http.GetStringAsync("/metrics"));
                var cpu = Environment.CpuUsage.TotalTime;
                var allocated = GC.GetTotalAllocatedBytes(precise: true);
                await child.StandardInput.WriteLineAsync("go");
                await child.StandardInput.FlushAsync();
                var line = await child.StandardOutput.ReadLineAsync() ?? throw new BenchFailureException("the clients' process exited without its result");
                var serverCpu = (Environment.CpuUsage.TotalTime - cpu).TotalSeconds;
                allocated = GC.GetTotalAllocatedBytes(precise: true) - allocated;
                var after = ServerStats(await http.GetStringAsync("/metrics"));
                await child.WaitForExitAsync();
                var r = JsonSerializer.Deserialize<ClientsResult>(line) ?? throw new BenchFailureException($"the clients' result is not readable: {line}");
                double Mean(string histogram) => (after[histogram + "_sum"] - before[histogram + "_sum"]) / Math.Max(1, after[histogram + "_count"] - before[histogram + "_count"]);
                return new Result(r.Answered, r.Failed, r.Seconds, r.P50, r.P99, Mean("dtrain_serving_batch_size"), serverCpu, r.CpuSeconds, allocated,
                    Mean("dtrain_serving_queue_wait_seconds"), Mean("dtrain_serving_pass_seconds"), P99(before, after, "dtrain_serving_queue_wait_seconds"), P99(before, after, "dtrain_serving_pass_seconds"));
            }
            finally
            {
                if (!child.HasExited) child.Kill(entireProcessTree: true);
            }
        }
        finally
        {
            File.Delete(textsFile);
        }
    }

    /// <summary>What the clients' process measured: answered and failed requests, wall seconds, p50/p99 latency, its CPU seconds.</summary>
    sealed record ClientsResult(int Answered, int Failed, double Seconds, double P50, double P99, double CpuSeconds);

    /// <summary>
    /// `dtrain-bench serve-clients URL http|grpc TEXTS.json COUNT CLIENTS`: the load's clients, in a process of their own
    /// (<see cref="RunLoad"/> starts it). 20 warm-up requests, then "warm" on stdout; on a line on stdin the timed
    /// requests, then one JSON line of <see cref="ClientsResult"/>.
    /// </summary>
    public static int Clients(string[] args)
    {
        if (args.Length != 5 || args[1] is not ("http" or "grpc")) throw new ArgumentException("usage: dtrain-bench serve-clients URL http|grpc TEXTS.json COUNT CLIENTS (started by dtrain-bench serve)");
        var address = new Uri(args[0]);
        var texts = JsonSerializer.Deserialize<string[]>(File.ReadAllText(args[2]))!;
        var count = int.Parse(args[3], CultureInfo.InvariantCulture);
        var clients = int.Parse(args[4], CultureInfo.InvariantCulture);
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = clients }) { BaseAddress = address };
        using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(address);
        Func<int, Task<bool>> request = args[1] == "http" ? HttpRequest(http, texts) : GrpcRequest(channel, texts);
        for (var i = 0; i < 20; i++)
            if (!request(i).GetAwaiter().GetResult()) throw new BenchFailureException($"warm-up request {i} was not answered");
        Console.WriteLine("warm");
        Console.ReadLine();
        var latencies = new double[count];
        var next = -1;
        var failed = 0;
        var answered = 0;
        var cpu = Environment.CpuUsage.TotalTime;
        var clock = Stopwatch.StartNew();
        Task.WhenAll(Enumerable.Range(0, clients).Select(_ => Task.Run(async () =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < count)
            {
                var started = Stopwatch.GetTimestamp();
                if (await request(i)) Interlocked.Increment(ref answered);
                else Interlocked.Increment(ref failed);
                latencies[i] = Stopwatch.GetElapsedTime(started).TotalSeconds;
            }
        }))).GetAwaiter().GetResult();
        var seconds = clock.Elapsed.TotalSeconds;
        var cpuSeconds = (Environment.CpuUsage.TotalTime - cpu).TotalSeconds;
        Array.Sort(latencies);
        Console.WriteLine(JsonSerializer.Serialize(new ClientsResult(answered, failed, seconds, latencies[(int)(0.50 * (count - 1))], latencies[(int)(0.99 * (count - 1))], cpuSeconds)));
        return 0;
    }

    /// <summary>A /v1/predict request of one text (true = answered 200 with one prediction). The bodies are serialized once, and an answer is checked by reading it as a JSON document rather than deserialized into objects.</summary>
    static Func<int, Task<bool>> HttpRequest(HttpClient http, string[] texts)
    {
        var bodies = texts.Select(t => JsonSerializer.SerializeToUtf8Bytes(new { texts = new[] { t }, top_k = 1 })).ToArray();
        return async i =>
        {
            try
            {
                using var content = new ByteArrayContent(bodies[i % bodies.Length]);
                content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
                using var response = await http.PostAsync("/v1/predict", content);
                if (response.StatusCode != HttpStatusCode.OK) return false;
                using var body = await JsonDocument.ParseAsync(await response.Content.ReadAsStreamAsync());
                return body.RootElement.TryGetProperty("predictions", out var predictions) && predictions.ValueKind == JsonValueKind.Array && predictions.GetArrayLength() == 1;
            }
            catch (HttpRequestException)
            {
                return false;
            }
        };
    }

    /// <summary>A gRPC Predict call of one text (true = answered with one prediction).</summary>
    static Func<int, Task<bool>> GrpcRequest(Grpc.Net.Client.GrpcChannel channel, string[] texts)
    {
        var client = new Dtrain.Protos.Serving.ModelServing.ModelServingClient(channel);
        return async i =>
        {
            try
            {
                var r = new Dtrain.Protos.Serving.PredictRequest { TopK = 1 };
                r.Texts.Add(texts[i % texts.Length]);
                var reply = await client.PredictAsync(r);
                return reply.Predictions.Count == 1;
            }
            catch (Grpc.Core.RpcException)
            {
                return false;
            }
        };
    }

    /// <summary>The upper bound of the histogram bucket that holds the 99th percentile of the observations between the two readings.</summary>
    static double P99(Dictionary<string, double> before, Dictionary<string, double> after, string histogram)
    {
        var prefix = histogram + "_bucket{le=\"";
        var bounds = after.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToArray();
        var total = after[histogram + "_count"] - before[histogram + "_count"];
        foreach (var key in bounds)
            if (after[key] - before.GetValueOrDefault(key) >= 0.99 * total)
                return key[prefix.Length..^2] is var le && le == "+Inf" ? double.PositiveInfinity : double.Parse(le, CultureInfo.InvariantCulture);
        return double.PositiveInfinity;
    }

    /// <summary>The sums and counts of the server's batch-size, queue-wait and forward-pass histograms, and the buckets of the last two, from its /metrics text.</summary>
    static Dictionary<string, double> ServerStats(string metrics)
    {
        double Value(string name) => double.Parse(metrics.Split('\n').First(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..], CultureInfo.InvariantCulture);
        var stats = new[] { "dtrain_serving_batch_size", "dtrain_serving_queue_wait_seconds", "dtrain_serving_pass_seconds" }
            .SelectMany(h => new[] { h + "_sum", h + "_count" }).ToDictionary(n => n, Value);
        // The cumulative buckets of the two time histograms, in the order /metrics lists them (ascending bounds).
        foreach (var line in metrics.Split('\n'))
            if ((line.StartsWith("dtrain_serving_queue_wait_seconds_bucket{", StringComparison.Ordinal) || line.StartsWith("dtrain_serving_pass_seconds_bucket{", StringComparison.Ordinal))
                && line.LastIndexOf(' ') is var space and > 0)
                stats[line[..space]] = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
        return stats;
    }

    /// <summary>Torch intra-op threads of the server's inference thread and of the forward passes alone (--threads; null = auto, serve-model's default).</summary>
    static int? torchThreads;

    static string Threads() => torchThreads switch
    {
        null => $"torch threads auto (per pass: 1 under {PassThreads.ParallelWork / 1_000_000} million multiply-adds, {Environment.ProcessorCount} above)",
        1 => "1 torch thread",
        var n => $"{n} torch threads",
    };

    /// <summary>The torch threads of a pass over <paramref name="sequences"/> (--threads N, or auto as serve-model chooses them).</summary>
    static int PassThreadsFor(Dtrain.Inference.TrainedModel trained, int[][] sequences) =>
        torchThreads ?? PassThreads.For(trained.Spec.Model, sequences.Sum(s => (long)s.Length), Environment.ProcessorCount);

    /// <summary>Texts per second (and per second of this process's CPU time) classifying <paramref name="count"/> texts in-process, in passes of 1 and of <paramref name="maxBatch"/>, with --threads torch threads (auto: chosen per pass as serve-model does).</summary>
    static ((double PerSecond, double PerCpuSecond) One, (double PerSecond, double PerCpuSecond) Batched) ForwardOnly(string model, string[] texts, int maxBatch, int count)
    {
        var threads = get_num_threads();
        try
        {
            using var trained = Dtrain.Inference.TrainedModel.Load(model);
            (double, double) Rate(int batch)
            {
                void Pass(string[] sample)
                {
                    // As the server's inference thread: encode, choose the pass's threads, classify.
                    var sequences = Dtrain.Inference.Predictor.Encode(trained, sample);
                    set_num_threads(PassThreadsFor(trained, sequences));
                    Dtrain.Inference.Predictor.Predict(trained, sequences, batch);
                }
                for (var i = 0; i < 10; i++) Pass([.. texts.Take(batch)]); // warm-up
                var passes = Math.Max(1, count / batch);
                var cpu = Environment.CpuUsage.TotalTime;
                var clock = Stopwatch.StartNew();
                for (var p = 0; p < passes; p++)
                    Pass([.. Enumerable.Range(p * batch, batch).Select(k => texts[k % texts.Length])]);
                var seconds = clock.Elapsed.TotalSeconds;
                return (passes * batch / seconds, passes * batch / (Environment.CpuUsage.TotalTime - cpu).TotalSeconds);
            }
            return (Rate(1), Rate(maxBatch));
        }
        finally
        {
            set_num_threads(threads);
        }
    }

    static Result LoadGrpc(string model, int maxBatch, int maxWait, string[] texts, int count, int clients) => LoadGrpcAsync(model, maxBatch, maxWait, texts, count, clients).GetAwaiter().GetResult();

    static async Task<Result> LoadGrpcAsync(string model, int maxBatch, int maxWait, string[] texts, int count, int clients)
    {
        await using var server = await ModelServer.StartAsync(new ServingOptions
        {
            ModelPath = model, Port = 0, GrpcPort = 0, MaxBatch = maxBatch, MaxWaitMs = maxWait, QueueCapacity = Math.Max(1024, clients * 2), Threads = torchThreads,
        });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.Address };
        return await RunLoad(http, server.GrpcAddress, "grpc", texts, count, clients);
    }

    static int Number(string[] args, string name, int fallback, int min, int max) =>
        BenchArgs.Option(args, name) is { } v ? BenchArgs.Number(name, v, min, max) : fallback;

    /// <summary>
    /// The texts of --texts FILE: the "text" field of each line of a JSONL file (a name ending in .jsonl), else each
    /// non-empty line; each cut to 1,000 characters (the bench classifiers' max_length). An empty or unreadable file is an
    /// ArgumentException naming it (and the line).
    /// </summary>
    internal static string[] ReadTexts(string path)
    {
        if (!File.Exists(path)) throw new ArgumentException($"--texts {path}: no such file (JSONL with a \"text\" field per line if it ends in .jsonl, else one text per line)");
        var jsonl = path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase);
        var texts = new List<string>();
        var number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var text = line;
            if (jsonl)
            {
                try
                {
                    using var doc = JsonDocument.Parse(line);
                    if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String)
                        throw new ArgumentException($"--texts {path}, line {number}: not an object with a \"text\" string");
                    text = t.GetString()!;
                }
                catch (JsonException e)
                {
                    throw new ArgumentException($"--texts {path}, line {number}: not valid JSON ({e.Message})");
                }
            }
            if (string.IsNullOrWhiteSpace(text)) continue;
            texts.Add(text.Length > 1000 ? text[..1000] : text);
        }
        if (texts.Count == 0) throw new ArgumentException($"--texts {path}: no texts in it");
        return [.. texts];
    }

    /// <summary>"N texts of FILE, words per text p10/p50/p90/max a/b/c/d": how mixed the lengths are.</summary>
    static string Lengths(string path, string[] texts)
    {
        var words = texts.Select(t => t.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length).Order().ToArray();
        int At(double q) => words[(int)(q * (words.Length - 1))];
        return $"{texts.Length} texts of {path} (words per text p10/p50/p90/max {At(0.1)}/{At(0.5)}/{At(0.9)}/{words[^1]})";
    }

    /// <summary>Texts of <paramref name="words"/> words from a <paramref name="vocab"/>-word vocabulary (w0, w1, ...), seeded.</summary>
    internal static string[] Texts(int words, int count, int vocab = 2000)
    {
        var random = new Random(7);
        return [.. Enumerable.Range(0, count).Select(_ => string.Join(' ', Enumerable.Range(0, words).Select(_ => $"w{random.Next(vocab)}")))];
    }

    /// <summary>A classifier the size of examples/spam-lstm.json (<see cref="Classifier"/>), on <paramref name="corpus"/> or else the 2,000 words w0..w1999.</summary>
    internal static string SpamSizedClassifier(string dir, IReadOnlyList<string>? corpus = null) => Classifier(dir, Size.Spam, 2000, corpus);

    /// <summary>
    /// A word-token bidirectional LSTM classifier of <paramref name="size"/>, saved untrained: its vocabulary fitted on
    /// <paramref name="corpus"/> as examples/spam-lstm.json fits it (lowercase words seen twice, at most 20,000), else the
    /// <paramref name="vocab"/> words w0, w1, ...
    /// </summary>
    internal static string Classifier(string dir, Size size, int vocab, IReadOnlyList<string>? corpus = null)
    {
        var spec = new JobSpec
        {
            Name = "bench-serve",
            Task = TaskKinds.Classification,
            Data = new DataSpec { Format = DataFormats.Jsonl, Train = "unused", MaxLength = 1000 },
            Tokenizer = corpus is null
                ? new TokenizerSpec { Kind = TokenizerKinds.Word, Lowercase = true }
                : new TokenizerSpec { Kind = TokenizerKinds.Word, Lowercase = true, MinFrequency = 2, MaxVocab = 20_000 },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = size.Layers, EmbeddingDim = size.Embedding, HiddenSize = size.Hidden, Bidirectional = true },
            Training = new TrainingSpec { Seed = 1 },
        };
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, corpus ?? [string.Join(' ', Enumerable.Range(0, vocab).Select(i => $"w{i}"))]);
        var labels = new LabelSet(["ham", "spam"]);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, labels.Count, CPU);
        return new CheckpointStore(Path.Combine(dir, "checkpoints"), 1).Save(TrainingCheckpoint.Capture(spec, tokenizer, labels, new TrainingState(), engine));
    }

    sealed class TempDirectory : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("dtrain-bench-serve-").FullName;

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}
