using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Dtrain.Inference;

namespace Dtrain.Bench;

/// <summary>
/// `dtrain-bench inference`: the Dtrain.Inference package in-process, one model run both ways in the same process —
/// ONNX Runtime on the exported .onnx and dtrain's own TorchSharp path on the .dtck (a pool of one copy) — single-text
/// latency (p50, p99: one Predict call per text, one after another) and throughput at batches of 1, 8 and 32 texts
/// (texts/s; their ratio is the most dynamic batching can gain over batch size 1). The model: a classifier of
/// examples/spam-lstm.json's shape (word tokens, embedding 64, bidirectional LSTM 96) with a vocabulary fitted on
/// data/spam-assassin (untrained weights: a pass costs the same), on held-out-sized texts: SpamAssassin messages cut to
/// its max_length of 1,000 characters; or --model PATH (a .dtck or run directory, exported here). Torch runs on
/// --threads intra-op threads (default 1, as serve-model); ONNX Runtime with Dtrain.Inference's default session options
/// (one intra-op thread) or --onnx-threads N (0 = ONNX Runtime's own default, a thread per core).
/// </summary>
internal static class InferenceBench
{
    public const string Usage = "dtrain-bench inference [--calls N (1000)] [--texts PATH.jsonl (data/spam-assassin/spam-assassin.jsonl) | --words N (synthetic N-word texts, as dtrain-bench serve)] [--threads N (1)] [--onnx-threads N (1; 0 = ONNX Runtime's default)] [--model PATH]";

    public static int Run(string root, string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--calls", "--texts", "--words", "--threads", "--onnx-threads", "--model");
        // Torch's intra-op threads (serve-model's default is 1; an app's default is every core, which on a loaded
        // machine can make a small pass many times slower). ONNX Runtime's are Dtrain.Inference's OnnxRuntimeOptions.IntraOpThreads.
        TorchSharp.torch.set_num_threads(BenchArgs.Option(args, "--threads") is { } th ? BenchArgs.Number("--threads", th, 1, 256) : 1);
        var onnxThreads = BenchArgs.Option(args, "--onnx-threads") is { } ot ? BenchArgs.Number("--onnx-threads", ot, 0, 256) : 1;
        var calls = BenchArgs.Option(args, "--calls") is { } c ? BenchArgs.Number("--calls", c, 10, 10_000_000) : 1000;
        var words = BenchArgs.Option(args, "--words") is { } w ? BenchArgs.Number("--words", w, 1, 1000) : (int?)null;
        if (words is not null && BenchArgs.Option(args, "--texts") is not null) throw new ArgumentException("--texts and --words: give one of them");
        var textsPath = BenchArgs.Option(args, "--texts") ?? Path.Combine(root, "data", "spam-assassin", "spam-assassin.jsonl");
        var texts = words is { } n ? ServeBench.Texts(n, 256) : ReadTexts(textsPath, 512);
        var source = words is { } m ? $"synthetic texts of {m} words" : $"{texts.Length} texts of {textsPath}";
        var dir = Directory.CreateTempSubdirectory("dtrain-bench-inference-").FullName;
        try
        {
            var checkpoint = BenchArgs.Option(args, "--model") ?? ServeBench.SpamSizedClassifier(dir, words is null ? texts : null);
            var onnx = Path.Combine(dir, "model.onnx");
            using (var trained = TrainedModel.Load(checkpoint)) OnnxExport.Write(trained, onnx);
            Console.WriteLine($"inference: {checkpoint}, {source} (mean {texts.Average(t => t.Length):F0} characters), " +
                              $"{calls} single-text calls per runtime, {Environment.ProcessorCount} CPUs, torch threads {TorchSharp.torch.get_num_threads()}, " +
                              $"ONNX Runtime intra-op threads {(onnxThreads == 0 ? "default" : onnxThreads)}");
            using var viaOnnx = DtrainModel.Load(onnx, onnx: new OnnxRuntimeOptions { IntraOpThreads = onnxThreads });
            using var viaTorch = DtrainModel.Load(checkpoint, poolSize: 1);
            // Both give the same answers (within float rounding) before either is timed.
            var a = viaOnnx.Predict(texts[..8], 1);
            var b = viaTorch.Predict(texts[..8], 1);
            for (var i = 0; i < 8; i++)
                if (a[i].Label != b[i].Label || Math.Abs(a[i].Probability - b[i].Probability) > 1e-4)
                    throw new BenchFailureException($"text {i}: ONNX Runtime says {a[i].Label} {a[i].Probability}, TorchSharp {b[i].Label} {b[i].Probability}");

            var results = new List<(string Name, Latency Single, double[] PerSecond)>();
            // Interleaved rounds, so drift on a loaded machine does not favour one runtime.
            foreach (var (name, model) in new[] { ("ONNX Runtime (.onnx)", viaOnnx), ("TorchSharp (.dtck)", viaTorch) })
            {
                for (var i = 0; i < 50; i++) model.Predict([texts[i % texts.Length]], 1); // warm-up
                var single = SingleText(model, texts, calls);
                double[] perSecond = [.. Batches.Select(n => Throughput(model, texts, n, Math.Max(n, calls)))];
                results.Add((name, single, perSecond));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{name}: single text p50 {single.P50 * 1e3:F3} ms, p99 {single.P99 * 1e3:F3} ms, mean {single.Mean * 1e3:F3} ms; " +
                    $"texts/s at batch {string.Join(", ", Batches.Select((n, i) => $"{n}: {perSecond[i]:F0}"))} (batch {Batches[^1]} / batch 1: {perSecond[^1] / perSecond[0]:F2}x)"));
            }
            var (ort, torch) = (results[0], results[1]);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"ONNX Runtime / TorchSharp: single-text p50 {torch.Single.P50 / ort.Single.P50:F2}x faster, batch-32 throughput {ort.PerSecond[^1] / torch.PerSecond[^1]:F2}x; " +
                $"ONNX Runtime single-text latency p50 {ort.Single.P50 * 1e3:F3} ms (target <= 1 ms: {(ort.Single.P50 <= 1e-3 ? "met" : "NOT met")})"));
            return 0;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    static readonly int[] Batches = [1, 8, 32];

    sealed record Latency(double P50, double P99, double Mean);

    static Latency SingleText(DtrainModel model, string[] texts, int calls)
    {
        var seconds = new double[calls];
        for (var i = 0; i < calls; i++)
        {
            var started = Stopwatch.GetTimestamp();
            model.Predict([texts[i % texts.Length]], 1);
            seconds[i] = Stopwatch.GetElapsedTime(started).TotalSeconds;
        }
        var mean = seconds.Average();
        Array.Sort(seconds);
        return new Latency(seconds[(int)(0.50 * (calls - 1))], seconds[(int)(0.99 * (calls - 1))], mean);
    }

    /// <summary>Texts per second classifying <paramref name="total"/> texts in calls of <paramref name="batch"/>.</summary>
    static double Throughput(DtrainModel model, string[] texts, int batch, int total)
    {
        var calls = total / batch;
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < calls; i++)
            model.Predict([.. Enumerable.Range(i * batch, batch).Select(k => texts[k % texts.Length])], 1);
        return calls * batch / clock.Elapsed.TotalSeconds;
    }

    /// <summary>Up to <paramref name="count"/> texts (the "text" field of a JSONL file), the file's last ones (a held-out part), cut to 1,000 characters.</summary>
    internal static string[] ReadTexts(string path, int count)
    {
        if (!File.Exists(path)) throw new ArgumentException($"--texts {path}: no such file (a JSONL file with a \"text\" field per line)");
        var texts = new List<string>();
        foreach (var line in File.ReadLines(path))
        {
            if (line.Length == 0) continue;
            using var doc = JsonDocument.Parse(line);
            if (doc.RootElement.TryGetProperty("text", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() is { Length: > 0 } s)
                texts.Add(s.Length > 1000 ? s[..1000] : s);
        }
        if (texts.Count == 0) throw new ArgumentException($"--texts {path}: no line has a \"text\" string");
        return [.. texts.Skip(Math.Max(0, texts.Count - count))];
    }
}
