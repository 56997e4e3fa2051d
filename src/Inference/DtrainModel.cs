using System.Collections.Concurrent;
using System.Text.Json;
using Dtrain.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using TorchSharp;

namespace Dtrain.Inference;

/// <summary>
/// How <see cref="DtrainModel"/> sets up ONNX Runtime for an exported <c>.onnx</c> model (ignored for a checkpoint).
/// The defaults: one intra-op thread (ONNX Runtime's own default is one thread per physical core, which can shorten a
/// call on an idle machine but whose spinning threads compete with the app's other work — on the project's loaded 2-core
/// machine one thread halved the mean single-text latency, docs/benchmarks.md), sequential execution, every graph optimization.
/// </summary>
public sealed record OnnxRuntimeOptions
{
    /// <summary>Threads one call's operators may use (ONNX Runtime's intra-op pool). 1 (default) = the calling thread only; 0 = ONNX Runtime's default (one per physical core).</summary>
    public int IntraOpThreads { get; init; } = 1;

    /// <summary>Whether idle intra-op threads spin waiting for work (only matters with more than one intra-op thread): lower latency on an idle machine, wasted cores on a busy one. Default true, as ONNX Runtime.</summary>
    public bool AllowSpinning { get; init; } = true;

    /// <summary>ONNX Runtime's graph optimizations (default: all).</summary>
    public GraphOptimizationLevel GraphOptimization { get; init; } = GraphOptimizationLevel.ORT_ENABLE_ALL;

    internal SessionOptions Create()
    {
        if (IntraOpThreads < 0) throw new ArgumentOutOfRangeException(nameof(IntraOpThreads), IntraOpThreads, "IntraOpThreads must be 0 (ONNX Runtime's default) or more");
        var options = new SessionOptions
        {
            IntraOpNumThreads = IntraOpThreads,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimization,
            EnableMemoryPattern = true,
            EnableCpuMemArena = true,
        };
        options.AddSessionConfigEntry("session.intra_op.allow_spinning", AllowSpinning ? "1" : "0");
        return options;
    }
}

/// <summary>One text's most probable label and its probability, with the <c>topK</c> most probable labels, most probable first.</summary>
public sealed record LabelPrediction(string Label, double Probability, IReadOnlyList<KeyValuePair<string, double>> Top);

/// <summary>
/// A trained dtrain model in an app's process, like ML.NET's PredictionEnginePool: load once, call <see cref="Predict"/>
/// (classifiers) or <see cref="Generate"/> (language models) from any number of threads. A <c>.dtck</c> checkpoint (or a
/// run directory) is run by dtrain's own TorchSharp code, from a pool of model copies (each call takes one, so calls run in
/// parallel up to the pool's size and wait beyond it): results equal <c>dtrain predict</c> / <c>dtrain generate</c>. An
/// exported <c>.onnx</c> model (<c>dtrain export</c>; its description is read from MODEL.onnx.json, else from the model's
/// metadata) is run by one ONNX Runtime session, which is thread-safe (set up by <see cref="OnnxRuntimeOptions"/>).
/// </summary>
public sealed class DtrainModel : IDisposable
{
    private readonly ConcurrentBag<TrainedModel> idle = [];
    private readonly List<TrainedModel> all = [];
    private readonly SemaphoreSlim available;
    private readonly InferenceSession? session;
    private readonly OnnxModelInfo? info;
    private readonly ITokenizer tokenizer;
    private int disposed;

    /// <summary>"classification" or "language_model".</summary>
    public string Task { get; }

    /// <summary>Label names in output order (classifiers); empty for a language model.</summary>
    public IReadOnlyList<string> Labels { get; }

    /// <summary>"dtck" (TorchSharp, dtrain's own code) or "onnx" (ONNX Runtime).</summary>
    public string Runtime { get; }

    /// <summary>How many calls run at once (the number of model copies of a checkpoint; ONNX Runtime: unbounded, reported as 0).</summary>
    public int PoolSize { get; }

    private DtrainModel(IReadOnlyList<TrainedModel> models)
    {
        all.AddRange(models);
        foreach (var m in models) idle.Add(m);
        available = new SemaphoreSlim(models.Count, models.Count);
        var first = models[0];
        Task = first.Spec.Task;
        Labels = first.Labels.Names;
        tokenizer = first.Tokenizer;
        Runtime = "dtck";
        PoolSize = models.Count;
    }

    private DtrainModel(InferenceSession session, OnnxModelInfo info)
    {
        this.session = session;
        this.info = info;
        available = new SemaphoreSlim(1, 1);
        Task = info.Task;
        Labels = info.Labels;
        tokenizer = TokenizerFactory.FromState(info.Tokenizer!);
        Runtime = "onnx";
        PoolSize = 0;
    }

    /// <summary>
    /// Loads <paramref name="path"/>: a path ending in .onnx is an exported model (ONNX Runtime, set up by
    /// <paramref name="onnx"/>, default <see cref="OnnxRuntimeOptions"/>'s), anything else a checkpoint file or run
    /// directory, loaded <paramref name="poolSize"/> times (default: the processor count, at most 4).
    /// </summary>
    public static DtrainModel Load(string path, int? poolSize = null, OnnxRuntimeOptions? onnx = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase)) return LoadOnnx(path, onnx ?? new OnnxRuntimeOptions());
        var size = poolSize ?? Math.Min(4, Environment.ProcessorCount);
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(poolSize), size, "poolSize must be 1 or more");
        var models = new List<TrainedModel>(size);
        try
        {
            for (var i = 0; i < size; i++) models.Add(TrainedModel.Load(path));
        }
        catch
        {
            foreach (var m in models) m.Dispose();
            throw;
        }
        return new DtrainModel(models);
    }

    private static DtrainModel LoadOnnx(string path, OnnxRuntimeOptions onnx)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"ONNX model not found: {path}", path);
        InferenceSession session;
        using (var options = onnx.Create()) session = new InferenceSession(path, options);
        try
        {
            var infoPath = OnnxExport.InfoPath(path);
            string json;
            if (File.Exists(infoPath)) json = File.ReadAllText(infoPath);
            else if (session.ModelMetadata.CustomMetadataMap.TryGetValue(OnnxExport.MetadataKey, out var meta)) json = meta;
            else throw new InvalidDataException($"{path}: neither {infoPath} nor the model's metadata key \"{OnnxExport.MetadataKey}\" describes it; export it with `dtrain export`");
            OnnxModelInfo info;
            try
            {
                info = JsonSerializer.Deserialize<OnnxModelInfo>(json, OnnxExport.Json) ?? throw new InvalidDataException("null");
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{(File.Exists(infoPath) ? infoPath : path)}: not a dtrain ONNX description: {e.Message}", e);
            }
            if (info.Format != "dtrain-onnx" || info.Tokenizer is null)
                throw new InvalidDataException($"{path}: the description is not a dtrain-onnx model with a tokenizer (format \"{info.Format}\")");
            return new DtrainModel(session, info);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Classifies <paramref name="texts"/> as <c>dtrain predict</c> does (texts cut to the model's max_length characters):
    /// one prediction per text, in order, each with the <paramref name="topK"/> most probable labels.
    /// </summary>
    public IReadOnlyList<LabelPrediction> Predict(IReadOnlyList<string> texts, int topK = 3)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(topK), topK, "topK must be 1 or more");
        if (Task != "classification") throw new InvalidOperationException($"the model is a {Task} model; Predict needs a classifier");
        for (var i = 0; i < texts.Count; i++)
            if (texts[i] is null) throw new ArgumentException($"texts[{i}] is null", nameof(texts));
        if (texts.Count == 0) return [];
        if (session is not null) return PredictOnnx(texts, topK);
        return WithModel(m => Predictor.Predict(m, texts).Select(p => Ranked(p.Probabilities, topK)).ToList());
    }

    /// <summary>
    /// Generates <paramref name="length"/> tokens after <paramref name="prompt"/> (returned without the prompt) as
    /// <c>dtrain generate</c> does: temperature 0 = greedy, topK 0 = all tokens, the same seed gives the same text.
    /// </summary>
    public string Generate(string prompt, int length = 300, double temperature = 0.8, int topK = 0, long seed = 1)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (Task != "language_model") throw new InvalidOperationException($"the model is a {Task} model; Generate needs a language model");
        if (session is not null) return GenerateOnnx(prompt, length, temperature, topK, seed);
        return WithModel(m => TextGenerator.Generate(m, prompt, length, temperature, topK, seed));
    }

    private T WithModel<T>(Func<TrainedModel, T> run)
    {
        ObjectDisposedException.ThrowIf(disposed != 0, this);
        available.Wait();
        if (!idle.TryTake(out var model))
        {
            available.Release();
            throw new InvalidOperationException("internal: no idle model copy although the pool admitted the call");
        }
        try
        {
            return run(model);
        }
        finally
        {
            idle.Add(model);
            available.Release();
        }
    }

    private static LabelPrediction Ranked(IReadOnlyDictionary<string, double> probabilities, int topK)
    {
        var top = probabilities.OrderByDescending(kv => kv.Value).Take(topK).ToList();
        return new LabelPrediction(top[0].Key, top[0].Value, top);
    }

    private static readonly string[] ClassifierInputs = ["tokens", "lengths"];
    private static readonly string[] ClassifierOutputs = ["probabilities"];

    private List<LabelPrediction> PredictOnnx(IReadOnlyList<string> texts, int topK)
    {
        // OrtValues over the managed arrays (no copies, no NamedOnnxValue wrappers), and only the output that is read.
        var (tokens, lengths, time) = OnnxInputs.ClassifierArrays(info!, tokenizer, texts);
        using var tokensValue = OrtValue.CreateTensorValueFromMemory(tokens, [texts.Count, time]);
        using var lengthsValue = OrtValue.CreateTensorValueFromMemory(lengths, [texts.Count]);
        using var results = session!.Run(RunDefaults, ClassifierInputs, [tokensValue, lengthsValue], ClassifierOutputs);
        var probabilities = results[0].GetTensorDataAsSpan<float>();
        var classes = Labels.Count;
        var predictions = new List<LabelPrediction>(texts.Count);
        for (var i = 0; i < texts.Count; i++)
        {
            var row = new Dictionary<string, double>(classes);
            for (var c = 0; c < classes; c++) row[Labels[c]] = probabilities[i * classes + c];
            predictions.Add(Ranked(row, topK));
        }
        return predictions;
    }

    /// <summary>Default run options, shared by every call (only read by ONNX Runtime).</summary>
    private static readonly RunOptions RunDefaults = new();

    /// <summary>The loop of <see cref="TextGenerator.Generate"/> over ONNX Runtime's logits, sampled by the same code.</summary>
    private string GenerateOnnx(string prompt, int length, double temperature, int topK, long seed)
    {
        if (length is < 1 or > TextGenerator.MaxTokens) throw new ArgumentException($"length {length} must be in [1, {TextGenerator.MaxTokens}]");
        if (!(temperature >= 0 && double.IsFinite(temperature))) throw new ArgumentException($"temperature {temperature} must be >= 0");
        if (topK < 0) throw new ArgumentException($"topK {topK} must be >= 0 (0 = no limit)");
        var ids = tokenizer.Encode(prompt);
        if (ids.Length == 0)
        {
            var nl = tokenizer.Encode("\n");
            ids = [nl.Length == 1 && nl[0] != tokenizer.UnkId ? nl[0] : Math.Min(2, tokenizer.VocabSize - 1)];
        }
        var lstm = info!.Cell == "lstm";
        var stateShape = new[] { info.Layers, 1, info.HiddenSize };
        var h = new DenseTensor<float>(stateShape);
        var c = lstm ? new DenseTensor<float>(stateShape) : null;
        var gen = new torch.Generator((ulong)seed);
        var output = new List<int>(length);
        long[] input = ids.Select(i => (long)i).ToArray();
        using var noGrad = torch.no_grad();
        while (output.Count < length)
        {
            using var results = session!.Run(OnnxInputs.Named(new DenseTensor<long>(input, [1, input.Length]), h, c));
            var logits = results.Single(r => r.Name == "logits").AsTensor<float>();
            var vocab = (int)logits.Dimensions[2];
            var last = new float[vocab];
            for (var v = 0; v < vocab; v++) last[v] = logits[0, input.Length - 1, v];
            h = Copy(results.Single(r => r.Name == "h_n").AsTensor<float>());
            if (c is not null) c = Copy(results.Single(r => r.Name == "c_n").AsTensor<float>());
            using var scope = torch.NewDisposeScope();
            output.Add(TextGenerator.Sample(torch.tensor(last), temperature, topK, gen, tokenizer.VocabSize, tokenizer.UnkId));
            input = [output[^1]];
        }
        var text = tokenizer.Decode(output);
        return tokenizer is WordTokenizer && prompt.Length > 0 && !char.IsWhiteSpace(prompt[^1]) && text.Length > 0 ? " " + text : text;
    }

    private static DenseTensor<float> Copy(Tensor<float> t) => new(t.ToArray(), t.Dimensions.ToArray());

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        session?.Dispose();
        foreach (var m in all) m.Dispose();
        available.Dispose();
    }
}
