using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using Dtrain.Data;
using Dtrain.Models;
using Dtrain.Onnx;
using Dtrain.Specs;
using Dtrain.Training.Tasks;
using Google.Protobuf;
using static TorchSharp.torch;

namespace Dtrain.Inference;

/// <summary>
/// Writes a trained model as an ONNX model (opset <see cref="Opset"/>) that computes what dtrain computes: the
/// embedding as Gather, every recurrent layer as ONNX's own LSTM, GRU or RNN operator (time-major, layout 0) with the
/// weights in ONNX's gate order, the output layer as Gemm (classifier) or MatMul + Add (language model).
/// <list type="bullet">
/// <item>Classifier: inputs <c>tokens</c> (batch, time) int64, padded with &lt;pad&gt; after each text, and <c>lengths</c>
/// (batch) int64, each in 1..time; every layer gets the lengths as <c>sequence_lens</c>, so a text is read exactly as
/// dtrain's packed sequences read it (the reverse direction starts at its last real token) and its summary is the last
/// layer's final hidden state (forward, then backward): outputs <c>logits</c> and <c>probabilities</c> (batch, classes).</item>
/// <item>Language model: inputs <c>tokens</c> (batch, time) and the carried state <c>h0</c> (and <c>c0</c> for LSTM),
/// (layers, batch, hidden), zeros for a fresh start; outputs <c>logits</c> (batch, time, vocab) and the state after the
/// last position, <c>h_n</c> (and <c>c_n</c>), to feed back as h0/c0 for the next chunk.</item>
/// </list>
/// The tokenizer, labels and input description go into the model's metadata_props (key <see cref="MetadataKey"/>) and
/// into a JSON file beside it (<see cref="InfoPath"/>); see docs/export.md.
/// </summary>
public static class OnnxExport
{
    /// <summary>The ONNX operator set: LSTM/GRU/RNN-14 (with <c>layout</c>), Squeeze-13 (axes as input).</summary>
    public const int Opset = 14;

    /// <summary>ONNX IR version 7 (the one released with opset 14).</summary>
    public const long IrVersion = 7;

    /// <summary>The metadata_props key holding the whole <see cref="OnnxModelInfo"/> JSON document.</summary>
    public const string MetadataKey = "dtrain";

    /// <summary>Weights an exported file holds at most: a protobuf message is limited to 2 GiB, with room left for the graph.</summary>
    private const long MaxWeightBytes = 2_000_000_000;

    /// <summary>Formats <c>dtrain export --format</c> accepts.</summary>
    public static readonly string[] Formats = ["onnx"];

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>The JSON description written beside <paramref name="modelPath"/>: the model's path with ".json" appended.</summary>
    public static string InfoPath(string modelPath) => modelPath + ".json";

    /// <summary>Writes <paramref name="trained"/> to <paramref name="path"/> and its description to <see cref="InfoPath"/>.</summary>
    public static OnnxModelInfo Write(TrainedModel trained, string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        var dir = System.IO.Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"output directory {dir} does not exist (from -o {path})");
        if (Directory.Exists(full)) throw new ArgumentException($"-o {path} is a directory; give the path of the .onnx file to write");
        var (model, info) = Build(trained.Spec, trained.Tokenizer, trained.Labels, trained.Engine.Model, trained.State.Step);
        WriteAtomically(full, model.ToByteArray());
        WriteAtomically(InfoPath(full), JsonSerializer.SerializeToUtf8Bytes(info, Json));
        return info;
    }

    /// <summary>The ONNX model and its description for <paramref name="model"/> (a classifier or language model built for <paramref name="spec"/>).</summary>
    public static (ModelProto Model, OnnxModelInfo Info) Build(JobSpec spec, ITokenizer tokenizer, LabelSet labels, nn.Module model, long step)
    {
        var cell = spec.Model.Cell;
        if (!CellKinds.All.Contains(cell))
            throw new NotSupportedException($"model.cell \"{cell}\" has no ONNX export; supported: {string.Join(", ", CellKinds.All)}");
        var weights = Weights.Of(model);
        var graph = new GraphBuilder(spec.Name);
        OnnxModelInfo info;
        switch (model)
        {
            case RecurrentClassifier clf:
                info = Classifier(graph, weights, spec, clf.Classes, labels);
                break;
            case RecurrentLanguageModel lm:
                info = LanguageModel(graph, weights, spec, lm.VocabSize);
                break;
            default:
                throw new NotSupportedException($"a {model.GetType().Name} model ({spec.Task}) has no ONNX export; supported: classification and language_model recurrent models");
        }
        // A protobuf message cannot exceed 2 GiB; larger ONNX models keep their weights in external files, which this does not write.
        var bytes = graph.Graph.Initializer.Sum(t => (long)t.RawData.Length + t.Int64Data.Count * 8L);
        if (bytes > MaxWeightBytes)
            throw new NotSupportedException($"the model's weights take {bytes / 1_000_000} MB; an ONNX file holds at most {MaxWeightBytes / 1_000_000} MB (larger models need ONNX external data, which dtrain export does not write)");
        var vocab = weights.Get("embedding.weight").Shape[0];
        if (vocab != tokenizer.VocabSize)
            throw new InvalidDataException($"the model's embedding has {vocab} rows but the tokenizer {tokenizer.VocabSize} tokens");
        info = info with
        {
            Task = spec.Task,
            Cell = cell,
            Layers = spec.Model.Layers,
            EmbeddingDim = spec.Model.EmbeddingDim,
            HiddenSize = spec.Model.HiddenSize,
            // A model that predicts the next token reads its text one way only.
            Bidirectional = spec.Model.Bidirectional && TrainingTasks.Find(spec.Task) is { PredictsNextToken: false },
            Opset = Opset,
            Step = step,
            Tokenizer = tokenizer.ToState(),
            VocabSize = tokenizer.VocabSize,
            PadId = tokenizer.PadId,
            UnkId = tokenizer.UnkId,
        };
        var proto = new ModelProto
        {
            IrVersion = IrVersion,
            ProducerName = "dtrain",
            ProducerVersion = typeof(OnnxExport).Assembly.GetName().Version?.ToString() ?? "",
            Domain = "dtrain",
            ModelVersion = 1,
            DocString = $"dtrain {spec.Task} \"{spec.Name}\" ({cell}, {spec.Model.Layers} layer(s)) at step {step}; see the \"{MetadataKey}\" metadata entry",
            Graph = graph.Graph,
        };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        proto.MetadataProps.Add(new StringStringEntryProto { Key = MetadataKey, Value = JsonSerializer.Serialize(info, Json) });
        return (proto, info);
    }

    private static OnnxModelInfo Classifier(GraphBuilder g, Weights w, JobSpec spec, int classes, LabelSet labels)
    {
        if (labels.Count != classes)
            throw new InvalidDataException($"the classifier has {classes} outputs but the checkpoint {labels.Count} labels");
        var dirs = spec.Model.Bidirectional ? 2 : 1;
        g.Input("tokens", TensorProto.Types.DataType.Int64, "batch", "time");
        g.Input("lengths", TensorProto.Types.DataType.Int64, "batch");
        var x = Embedded(g, w);
        var lengths = g.Node("Cast", ["lengths"], "sequence_lens", Attr.Int("to", (long)TensorProto.Types.DataType.Int32));
        var reshapeLast = g.Int64s("shape_time_batch_features", [0, 0, -1]);
        string hidden = "";
        for (var k = 0; k < spec.Model.Layers; k++)
        {
            var last = k == spec.Model.Layers - 1;
            // Only the last layer's final hidden state is read (from Y_h); the earlier layers' outputs feed the next.
            var outputs = last ? new[] { "", $"layer{k}_h" } : [$"layer{k}_y"];
            g.Node(spec.Model.Cell.ToUpperInvariant(), [x, .. Layer(g, w, spec.Model.Cell, k, dirs, spec.Model.HiddenSize), lengths], outputs,
                [.. CellAttributes(spec.Model.Cell, spec.Model.HiddenSize, dirs)]);
            if (last)
            {
                hidden = outputs[1];
                break;
            }
            // Y (time, dirs, batch, hidden) -> (time, batch, dirs*hidden): forward and backward outputs side by side, as torch stacks them.
            var tbdh = g.Node("Transpose", [outputs[0]], $"layer{k}_tbdh", Attr.Ints("perm", 0, 2, 1, 3));
            x = g.Node("Reshape", [tbdh, reshapeLast], $"layer{k}_out");
        }
        // Y_h (dirs, batch, hidden) -> (batch, dirs*hidden): [forward | backward] of the last layer, as the classifier concatenates them.
        var bdh = g.Node("Transpose", [hidden], "final_bdh", Attr.Ints("perm", 1, 0, 2));
        var summary = g.Node("Reshape", [bdh, g.Int64s("shape_batch_features", [0, -1])], "summary");
        var headW = w.Get("head.weight");
        var headB = w.Get("head.bias");
        g.Node("Gemm", [summary, g.Float("head.weight", headW), g.Float("head.bias", headB)], "logits", Attr.Int("transB", 1));
        g.Node("Softmax", ["logits"], "probabilities", Attr.Int("axis", 1));
        g.Output("logits", "batch", classes.ToString(System.Globalization.CultureInfo.InvariantCulture));
        g.Output("probabilities", "batch", classes.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return new OnnxModelInfo
        {
            Labels = labels.Names,
            MaxLength = spec.Data.MaxLength,
            Inputs =
            [
                new("tokens", "int64", ["batch", "time"], "token ids of each text (the tokenizer's), followed by pad_id up to the longest text of the batch; a text with no tokens is one unk_id"),
                new("lengths", "int64", ["batch"], "each text's number of tokens, 1..time"),
            ],
            Outputs =
            [
                new("logits", "float", ["batch", $"{classes}"], "one score per label, in the order of labels"),
                new("probabilities", "float", ["batch", $"{classes}"], "softmax of logits: the probability of each label"),
            ],
        };
    }

    private static OnnxModelInfo LanguageModel(GraphBuilder g, Weights w, JobSpec spec, int vocab)
    {
        var cell = spec.Model.Cell;
        var layers = spec.Model.Layers;
        var lstm = cell == CellKinds.Lstm;
        g.Input("tokens", TensorProto.Types.DataType.Int64, "batch", "time");
        g.Input("h0", TensorProto.Types.DataType.Float, $"{layers}", "batch", $"{spec.Model.HiddenSize}");
        if (lstm) g.Input("c0", TensorProto.Types.DataType.Float, $"{layers}", "batch", $"{spec.Model.HiddenSize}");
        var x = Embedded(g, w);
        var axis0 = g.Int64s("axes_0", [0]);
        var axis1 = g.Int64s("axes_1", [1]);
        var hs = new List<string>();
        var cs = new List<string>();
        for (var k = 0; k < layers; k++)
        {
            // This layer's slice of the carried state: (1, batch, hidden), ONNX's (directions, batch, hidden).
            var from = g.Int64s($"slice_{k}_start", [k]);
            var to = g.Int64s($"slice_{k}_end", [k + 1]);
            var h0 = g.Node("Slice", ["h0", from, to, axis0], $"layer{k}_h0");
            var inputs = new List<string> { x };
            inputs.AddRange(Layer(g, w, cell, k, 1, spec.Model.HiddenSize));
            inputs.Add(""); // sequence_lens: every row runs the whole chunk, as dtrain's language model does
            inputs.Add(h0);
            if (lstm) inputs.Add(g.Node("Slice", ["c0", from, to, axis0], $"layer{k}_c0"));
            var outputs = lstm ? new[] { $"layer{k}_y", $"layer{k}_h", $"layer{k}_c" } : [$"layer{k}_y", $"layer{k}_h"];
            g.Node(cell.ToUpperInvariant(), [.. inputs], outputs, [.. CellAttributes(cell, spec.Model.HiddenSize, 1)]);
            hs.Add(outputs[1]);
            if (lstm) cs.Add(outputs[2]);
            // Y (time, 1, batch, hidden) -> (time, batch, hidden)
            x = g.Node("Squeeze", [outputs[0], axis1], $"layer{k}_out");
        }
        g.Node("Concat", [.. hs], "h_n", Attr.Int("axis", 0));
        if (lstm) g.Node("Concat", [.. cs], "c_n", Attr.Int("axis", 0));
        var bth = g.Node("Transpose", [x], "final_bth", Attr.Ints("perm", 1, 0, 2));
        var headW = w.Get("head.weight");
        var projected = g.Node("MatMul", [bth, g.Float("head.weight_t", headW.Transposed())], "projected");
        g.Node("Add", [projected, g.Float("head.bias", w.Get("head.bias"))], "logits");
        var v = $"{vocab}";
        var h = $"{spec.Model.HiddenSize}";
        var l = $"{layers}";
        g.Output("logits", "batch", "time", v);
        g.Output("h_n", l, "batch", h);
        if (lstm) g.Output("c_n", l, "batch", h);
        var state = "the carried state; zeros for a fresh start (as dtrain generate starts), else the previous call's";
        return new OnnxModelInfo
        {
            Labels = [],
            Inputs =
            [
                new("tokens", "int64", ["batch", "time"], "token ids (the tokenizer's)"),
                new("h0", "float", [l, "batch", h], $"hidden state per layer: {state} h_n"),
                .. lstm ? new OnnxTensorInfo[] { new("c0", "float", [l, "batch", h], $"cell state per layer: {state} c_n") } : [],
            ],
            Outputs =
            [
                new("logits", "float", ["batch", "time", v], "next-token scores at every position (softmax gives the probabilities)"),
                new("h_n", "float", [l, "batch", h], "hidden state after the last position: h0 of the next call"),
                .. lstm ? new OnnxTensorInfo[] { new("c_n", "float", [l, "batch", h], "cell state after the last position: c0 of the next call") } : [],
            ],
        };
    }

    /// <summary>tokens (batch, time) -> (time, batch, embedding): transposed first, so Gather yields ONNX's time-major layout directly.</summary>
    private static string Embedded(GraphBuilder g, Weights w)
    {
        var tb = g.Node("Transpose", ["tokens"], "tokens_tb", Attr.Ints("perm", 1, 0));
        return g.Node("Gather", [g.Float("embedding.weight", w.Get("embedding.weight")), tb], "embedded", Attr.Int("axis", 0));
    }

    /// <summary>W, R and B of layer <paramref name="k"/>: torch's (weight_ih, weight_hh, bias_ih + bias_hh) per direction, gates in ONNX order.</summary>
    private static string[] Layer(GraphBuilder g, Weights w, string cell, int k, int dirs, int hidden)
    {
        // ONNX gate g is torch's gate order[g]: LSTM torch (i, f, g, o) -> ONNX (i, o, f, c); GRU torch (r, z, n) -> ONNX (z, r, h).
        int[] order = cell switch
        {
            CellKinds.Lstm => [0, 3, 1, 2],
            CellKinds.Gru => [1, 0, 2],
            _ => [0],
        };
        var ws = new List<Weight>();
        var rs = new List<Weight>();
        var bs = new List<Weight>();
        for (var d = 0; d < dirs; d++)
        {
            var suffix = $"_l{k}{(d == 1 ? "_reverse" : "")}";
            ws.Add(w.Rnn("weight_ih" + suffix).Gates(order, hidden));
            rs.Add(w.Rnn("weight_hh" + suffix).Gates(order, hidden));
            bs.Add(Weight.Concat(w.Rnn("bias_ih" + suffix).Gates(order, hidden), w.Rnn("bias_hh" + suffix).Gates(order, hidden)));
        }
        return
        [
            g.Float($"layer{k}_W", Weight.Stack(ws)),
            g.Float($"layer{k}_R", Weight.Stack(rs)),
            g.Float($"layer{k}_B", Weight.Stack(bs)),
        ];
    }

    private static IEnumerable<AttributeProto> CellAttributes(string cell, int hidden, int dirs)
    {
        yield return Attr.Int("hidden_size", hidden);
        yield return Attr.String("direction", dirs == 2 ? "bidirectional" : "forward");
        yield return Attr.Int("layout", 0);
        // torch's GRU applies the reset gate after the hidden-side product: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
        if (cell == CellKinds.Gru) yield return Attr.Int("linear_before_reset", 1);
        if (cell == CellKinds.Rnn) yield return Attr.Strings("activations", [.. Enumerable.Repeat("Tanh", dirs)]);
    }

    private static void WriteAtomically(string path, byte[] bytes)
    {
        var tmp = path + ".tmp";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>A float tensor copied out of torch: its shape and values (row-major).</summary>
    private sealed record Weight(long[] Shape, float[] Values)
    {
        /// <summary>The rows reordered gate by gate: block g of the result is block <paramref name="order"/>[g] of this (each block <paramref name="hidden"/> rows).</summary>
        public Weight Gates(int[] order, int hidden)
        {
            if (Shape[0] != (long)order.Length * hidden)
                throw new InvalidDataException($"a recurrent weight has {Shape[0]} rows; expected {order.Length} gates of {hidden}");
            var block = Values.Length / order.Length;
            var result = new float[Values.Length];
            for (var gate = 0; gate < order.Length; gate++)
                Array.Copy(Values, order[gate] * block, result, gate * block, block);
            return this with { Values = result };
        }

        public Weight Transposed()
        {
            var (rows, cols) = ((int)Shape[0], (int)Shape[1]);
            var result = new float[Values.Length];
            for (var r = 0; r < rows; r++)
                for (var c = 0; c < cols; c++)
                    result[c * rows + r] = Values[r * cols + c];
            return new Weight([cols, rows], result);
        }

        public static Weight Concat(Weight a, Weight b) => new([a.Shape[0] + b.Shape[0]], [.. a.Values, .. b.Values]);

        /// <summary>A new leading dimension: (n, ...).</summary>
        public static Weight Stack(IReadOnlyList<Weight> parts) =>
            new([parts.Count, .. parts[0].Shape], [.. parts.SelectMany(p => p.Values)]);
    }

    /// <summary>The model's parameters by name (embedding.weight, rnn.lstm.weight_ih_l0, head.weight, ...).</summary>
    private sealed class Weights
    {
        private readonly Dictionary<string, Weight> byName = new(StringComparer.Ordinal);
        private string rnnPrefix = "";

        public static Weights Of(nn.Module model)
        {
            var w = new Weights();
            using var noGrad = no_grad();
            foreach (var (name, p) in model.named_parameters())
            {
                using var cpu = p.detach().cpu().to_type(ScalarType.Float32).contiguous();
                w.byName[name] = new Weight(cpu.shape, cpu.data<float>().ToArray());
                if (name.EndsWith(".weight_ih_l0", StringComparison.Ordinal)) w.rnnPrefix = name[..^"weight_ih_l0".Length];
            }
            if (w.rnnPrefix.Length == 0) throw new NotSupportedException($"the {model.GetType().Name} has no recurrent layer parameters (weight_ih_l0) to export");
            foreach (var (name, values) in w.byName)
                if (values.Values.Any(v => !float.IsFinite(v)))
                    throw new InvalidDataException($"parameter {name} holds non-finite values (the checkpoint's weights have diverged): nothing to export");
            return w;
        }

        public Weight Get(string name) => byName.TryGetValue(name, out var w) ? w : throw new InvalidDataException($"the model has no parameter {name}");

        public Weight Rnn(string name) => Get(rnnPrefix + name);
    }

    private static class Attr
    {
        public static AttributeProto Int(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

        public static AttributeProto Ints(string name, params long[] values)
        {
            var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
            a.Ints.Add(values);
            return a;
        }

        public static AttributeProto String(string name, string value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(value) };

        public static AttributeProto Strings(string name, string[] values)
        {
            var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Strings };
            a.Strings.Add(values.Select(ByteString.CopyFromUtf8));
            return a;
        }
    }

    private sealed class GraphBuilder(string name)
    {
        public GraphProto Graph { get; } = new() { Name = string.IsNullOrEmpty(name) ? "dtrain" : name };

        public string Node(string op, string[] inputs, string output, params AttributeProto[] attributes) =>
            Node(op, inputs, [output], attributes)[0];

        public string[] Node(string op, string[] inputs, string[] outputs, AttributeProto[] attributes)
        {
            var node = new NodeProto { OpType = op, Name = $"{op}_{Graph.Node.Count}" };
            node.Input.Add(inputs);
            node.Output.Add(outputs);
            node.Attribute.Add(attributes);
            Graph.Node.Add(node);
            return outputs;
        }

        public string Float(string name, Weight w)
        {
            var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float, RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(w.Values.AsSpan())) };
            if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("ONNX raw_data is little-endian");
            t.Dims.Add(w.Shape);
            Graph.Initializer.Add(t);
            return name;
        }

        public string Int64s(string name, long[] values)
        {
            var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Int64 };
            t.Dims.Add(values.Length);
            t.Int64Data.Add(values);
            Graph.Initializer.Add(t);
            return name;
        }

        public void Input(string name, TensorProto.Types.DataType type, params string[] dims) => Graph.Input.Add(Value(name, type, dims));

        public void Output(string name, params string[] dims) => Graph.Output.Add(Value(name, TensorProto.Types.DataType.Float, dims));

        /// <summary>Numeric dims are fixed, others named (symbolic: "batch", "time").</summary>
        private static ValueInfoProto Value(string name, TensorProto.Types.DataType type, string[] dims)
        {
            var shape = new TensorShapeProto();
            foreach (var d in dims)
                shape.Dim.Add(long.TryParse(d, out var n) ? new TensorShapeProto.Types.Dimension { DimValue = n } : new TensorShapeProto.Types.Dimension { DimParam = d });
            return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } } };
        }
    }
}

/// <summary>
/// What an exported model is and how to feed it: written into the model's metadata (key "dtrain") and beside it as
/// MODEL.onnx.json. Documented in docs/export.md.
/// </summary>
public sealed record OnnxModelInfo
{
    public string Format { get; init; } = "dtrain-onnx";
    public int FormatVersion { get; init; } = 1;
    public string Task { get; init; } = "";
    public string Cell { get; init; } = "";
    public int Layers { get; init; }
    public int EmbeddingDim { get; init; }
    public int HiddenSize { get; init; }
    public bool Bidirectional { get; init; }
    public int Opset { get; init; }
    /// <summary>Optimizer steps the checkpoint had taken.</summary>
    public long Step { get; init; }
    public IReadOnlyList<OnnxTensorInfo> Inputs { get; init; } = [];
    public IReadOnlyList<OnnxTensorInfo> Outputs { get; init; } = [];
    /// <summary>Classification: label names in output column order; empty for a language model.</summary>
    public IReadOnlyList<string> Labels { get; init; } = [];
    /// <summary>Classification: texts are cut to their first max_length characters before tokenizing (as dtrain predict does); null for a language model.</summary>
    public int? MaxLength { get; init; }
    public int VocabSize { get; init; }
    public int PadId { get; init; }
    public int UnkId { get; init; }
    /// <summary>The tokenizer: kind ("char" or "word"), lowercase, and the vocabulary in id order (the token with id i is tokens[i]).</summary>
    public TokenizerState? Tokenizer { get; init; }
}

/// <summary>One graph input or output: name, element type, dims (numbers or symbols) and meaning.</summary>
public sealed record OnnxTensorInfo(string Name, string Type, IReadOnlyList<string> Shape, string Description);
