using System.Text.Json;
using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Inference;
using Dtrain.Models;
using Dtrain.Onnx;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using static TorchSharp.torch;

namespace Dtrain.Tests.Inference;

/// <summary>
/// `dtrain export --format onnx`: the exported file, run by ONNX Runtime, computes what dtrain computes — classifier
/// probabilities on batches of mixed lengths, language-model logits with the carried state going out and back in,
/// and the same generated text for the same seed.
/// </summary>
public class OnnxExportTests
{
    private const double Tolerance = 1e-5;

    /// <summary>Mixed lengths (1 to ~25 words), an unknown word, an empty text (one &lt;unk&gt;), one longer than max_length.</summary>
    private static readonly string[] Texts =
    [
        "free money now",
        "lunch",
        "are we still on for lunch at noon tomorrow or should we move it to friday because of the meeting with the team",
        "",
        "click here to win a free prize, free money, free everything: click click click now",
        "zebra",
        "see you at the meeting",
        string.Concat(Enumerable.Repeat("money lunch ", 20)),
    ];

    private const int MaxChars = 150;

    private static string SaveClassifier(TempDir tmp, string cell, int layers, bool bidirectional)
    {
        var spec = TestJobs.Classifier("unused", cell: cell) with
        {
            Model = new ModelSpec { Cell = cell, Layers = layers, EmbeddingDim = 8, HiddenSize = 12, Bidirectional = bidirectional },
        };
        spec = spec with { Data = spec.Data with { MaxLength = MaxChars } };
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, Texts.Where(t => !t.Contains("zebra", StringComparison.Ordinal)));
        var labels = new LabelSet(["ham", "spam", "eggs"]);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, labels.Count, CPU);
        var store = new CheckpointStore(Path.Combine(tmp.Path, "checkpoints"), 3);
        return store.Save(TrainingCheckpoint.Capture(spec, tokenizer, labels, new TrainingState { Step = 7 }, engine));
    }

    /// <summary>Training steps of the language models: enough that greedy generation is more than one repeated character.</summary>
    private const int Steps = 40;

    /// <summary>A small character language model trained a few steps (so its predictions are not near uniform).</summary>
    private static string SaveLanguageModel(TempDir tmp, string cell, int layers)
    {
        var spec = TestJobs.CharLm("unused", cell) with { Model = new ModelSpec { Cell = cell, Layers = layers, EmbeddingDim = 8, HiddenSize = 16 } };
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, [TestJobs.Text(2)]);
        var source = new LanguageModelBatches(tokenizer.Encode(TestJobs.Text()), 4, 16, LmSamplingKinds.Stream, seed: 1);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        for (var k = 0; k < Steps; k++)
        {
            using var batch = source.Get(new StepPosition(0, k), 0, 4)!;
            var stats = engine.ComputeGradients(batch, carryState: true);
            engine.ApplyGradients(stats.Count, 0.03);
        }
        var store = new CheckpointStore(Path.Combine(tmp.Path, "checkpoints"), 3);
        return store.Save(TrainingCheckpoint.Capture(spec, tokenizer, LabelSet.Empty, new TrainingState { Step = Steps }, engine));
    }

    private static string Export(TempDir tmp, string checkpoint, out TrainedModel trained)
    {
        trained = TrainedModel.Load(checkpoint);
        var path = Path.Combine(tmp.Path, "model.onnx");
        OnnxExport.Write(trained, path);
        return path;
    }

    private static OnnxModelInfo ReadInfo(string onnx) =>
        JsonSerializer.Deserialize<OnnxModelInfo>(File.ReadAllText(OnnxExport.InfoPath(onnx)), OnnxExport.Json)!;

    [Fact]
    public void Predict_of_encoded_sequences_refuses_an_id_outside_the_vocabulary_or_an_empty_sequence_before_libtorch_sees_it()
    {
        // An out-of-range id would abort the process inside libtorch's embedding; the public overload checks first.
        using var tmp = new TempDir();
        Export(tmp, SaveClassifier(tmp, CellKinds.Lstm, 1, false), out var trained);
        using var _ = trained;
        var good = Predictor.Encode(trained, Texts);
        Assert.Equal(Predictor.Predict(trained, Texts).Select(p => p.Label), Predictor.Predict(trained, good).Select(p => p.Label));
        var vocab = trained.Tokenizer.VocabSize;
        var high = Assert.Throws<ArgumentException>(() => Predictor.Predict(trained, [good[0], [2, vocab]]));
        Assert.Contains($"sequences[1][1] = {vocab} is not a token id of this model (0 to {vocab - 1})", high.Message);
        Assert.Contains("sequences[0][0] = -1", Assert.Throws<ArgumentException>(() => Predictor.Predict(trained, [[-1]])).Message);
        Assert.Contains("sequences[0] is empty", Assert.Throws<ArgumentException>(() => Predictor.Predict(trained, [[]])).Message);
    }

    [Theory]
    [InlineData(CellKinds.Lstm, 1, false)]
    [InlineData(CellKinds.Lstm, 2, false)]
    [InlineData(CellKinds.Lstm, 2, true)]
    [InlineData(CellKinds.Gru, 1, false)]
    [InlineData(CellKinds.Gru, 2, true)]
    [InlineData(CellKinds.Rnn, 1, true)]
    [InlineData(CellKinds.Rnn, 2, false)]
    public void Classifier_in_onnx_runtime_gives_dtrains_probabilities_on_texts_of_mixed_lengths(string cell, int layers, bool bidirectional)
    {
        using var tmp = new TempDir();
        var onnx = Export(tmp, SaveClassifier(tmp, cell, layers, bidirectional), out var trained);
        using var _ = trained;
        var expected = Predictor.Predict(trained, Texts);

        // Encoded as DtrainModel encodes for ONNX Runtime, from the exported description: cut to max_length characters,
        // tokenized, one <unk> for a text without tokens, padded with pad_id up to the batch's longest.
        var info = ReadInfo(onnx);
        var (tokens, lengths) = OnnxInputs.Classifier(info, TokenizerFactory.FromState(info.Tokenizer!), Texts);
        Assert.True(Texts[^1].Length > MaxChars && lengths.ToArray().Distinct().Count() >= 5, "the batch mixes lengths and cuts a long text");
        var (rows, time) = ((int)tokens.Dimensions[0], (int)tokens.Dimensions[1]);
        using var session = new InferenceSession(onnx);
        using var results = session.Run(OnnxInputs.Named(tokens, lengths));
        var probabilities = results.Single(r => r.Name == "probabilities").AsTensor<float>();
        var logits = results.Single(r => r.Name == "logits").AsTensor<float>();
        Assert.Equal(new[] { "ham", "spam", "eggs" }, info.Labels);
        var worst = 0.0;
        for (var i = 0; i < Texts.Length; i++)
            for (var c = 0; c < info.Labels.Count; c++)
                worst = Math.Max(worst, Math.Abs(probabilities[i, c] - expected[i].Probabilities[info.Labels[c]]));
        Assert.True(worst <= Tolerance, $"ONNX Runtime's probabilities differ from dtrain predict's by up to {worst:G3}");

        // The logits too, against the classifier itself on the very same padded batch.
        using var noGrad = no_grad();
        using var torchLogits = ((RecurrentClassifier)trained.Engine.Model).Forward(tensor(tokens.ToArray(), [rows, time]), tensor(lengths.ToArray()));
        var reference = torchLogits.data<float>().ToArray();
        worst = 0.0;
        for (var i = 0; i < Texts.Length; i++)
            for (var c = 0; c < info.Labels.Count; c++)
                worst = Math.Max(worst, Math.Abs(logits[i, c] - reference[i * info.Labels.Count + c]));
        Assert.True(worst <= Tolerance, $"ONNX Runtime's logits differ from the classifier's by up to {worst:G3}");
        // Not a vacuous comparison: the texts get different probabilities.
        Assert.True(Math.Abs(probabilities[0, 0] - probabilities[2, 0]) > 1e-4);
    }

    [Fact]
    public void DtrainModel_runs_onnx_with_the_session_options_given_and_gives_dtrains_probabilities_alone_and_in_batches()
    {
        using var tmp = new TempDir();
        var onnx = Export(tmp, SaveClassifier(tmp, CellKinds.Lstm, 1, bidirectional: true), out var trained);
        using var _ = trained;
        var expected = Predictor.Predict(trained, Texts);
        foreach (var options in new OnnxRuntimeOptions?[]
                 {
                     null, new() { IntraOpThreads = 0 }, new() { IntraOpThreads = 2, AllowSpinning = false },
                     new() { GraphOptimization = GraphOptimizationLevel.ORT_DISABLE_ALL },
                 })
        {
            using var model = DtrainModel.Load(onnx, onnx: options);
            var batched = model.Predict(Texts, topK: 3);
            for (var i = 0; i < Texts.Length; i++)
            {
                var alone = model.Predict([Texts[i]], topK: 3)[0];
                foreach (var p in new[] { batched[i], alone })
                {
                    Assert.Equal(expected[i].Label, p.Label);
                    foreach (var (label, probability) in p.Top)
                        Assert.True(Math.Abs(probability - expected[i].Probabilities[label]) <= Tolerance,
                            $"text {i}, {label}, options {options}: {probability} against dtrain's {expected[i].Probabilities[label]}");
                }
            }
        }
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => DtrainModel.Load(onnx, onnx: new OnnxRuntimeOptions { IntraOpThreads = -1 }));
        Assert.Contains("IntraOpThreads", bad.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(CellKinds.Lstm, 1)]
    [InlineData(CellKinds.Lstm, 2)]
    [InlineData(CellKinds.Gru, 1)]
    [InlineData(CellKinds.Gru, 2)]
    [InlineData(CellKinds.Rnn, 1)]
    [InlineData(CellKinds.Rnn, 2)]
    public void Language_model_in_onnx_runtime_gives_dtrains_logits_and_its_carried_state_round_trips(string cell, int layers)
    {
        using var tmp = new TempDir();
        var onnx = Export(tmp, SaveLanguageModel(tmp, cell, layers), out var trained);
        using var _ = trained;
        var lm = (RecurrentLanguageModel)trained.Engine.Model;
        var ids = trained.Tokenizer.Encode(TestJobs.Text(2)).Select(i => (long)i).ToArray();
        const int rows = 3;
        using var session = new InferenceSession(onnx);
        using var noGrad = no_grad();

        // Two chunks in a row: the second starts from the state the first ended in (ONNX's h_n/c_n fed back as h0/c0).
        RecurrentState? torchState = null;
        float[]? h = null, c = null;
        var lstm = cell == CellKinds.Lstm;
        var offset = 0;
        foreach (var time in new[] { 9, 5 })
        {
            var chunk = new long[rows * time];
            for (var r = 0; r < rows; r++) Array.Copy(ids, offset + r * 20, chunk, r * time, time);
            offset += time;
            var (torchLogits, next) = lm.Forward(tensor(chunk, [rows, time]), torchState);
            torchState?.Dispose();
            torchState = next;

            var stateShape = new[] { layers, rows, 16 };
            using var results = session.Run(OnnxInputs.Named(
                new DenseTensor<long>(chunk, [rows, time]),
                new DenseTensor<float>(h ?? new float[layers * rows * 16], stateShape),
                lstm ? new DenseTensor<float>(c ?? new float[layers * rows * 16], stateShape) : null));
            AssertClose(torchLogits, results.Single(x => x.Name == "logits").AsTensor<float>().ToArray(), $"logits of the {time}-step chunk");
            h = results.Single(x => x.Name == "h_n").AsTensor<float>().ToArray();
            AssertClose(torchState.H, h, "h_n");
            if (lstm)
            {
                c = results.Single(x => x.Name == "c_n").AsTensor<float>().ToArray();
                AssertClose(torchState.C!, c, "c_n");
            }
            else
                Assert.DoesNotContain(results, x => x.Name == "c_n");
            torchLogits.Dispose();
        }
        torchState?.Dispose();
        // Not a vacuous comparison: the state is not zero.
        Assert.Contains(h!, v => Math.Abs(v) > 1e-3);
    }

    [Theory]
    [InlineData(CellKinds.Lstm, 2, 0.0, 0)]
    [InlineData(CellKinds.Lstm, 1, 0.8, 0)]
    [InlineData(CellKinds.Gru, 2, 1.0, 5)]
    [InlineData(CellKinds.Rnn, 2, 0.8, 0)]
    public void Language_model_in_onnx_runtime_generates_dtrains_text_for_the_same_seed(string cell, int layers, double temperature, int topK)
    {
        using var tmp = new TempDir();
        var onnx = Export(tmp, SaveLanguageModel(tmp, cell, layers), out var trained);
        using var _ = trained;
        const string prompt = "the cat ";
        const long seed = 11;
        const int length = 60;
        var expected = TextGenerator.Generate(trained, prompt, length, temperature, topK, seed);

        // DtrainModel's loop over ONNX Runtime: the prompt once from a zero state, then one token at a time carrying
        // h_n/c_n back in; each token drawn by dtrain's sampler from ONNX Runtime's logits with a generator of the same seed.
        using var model = DtrainModel.Load(onnx);
        Assert.Equal("onnx", model.Runtime);
        Assert.Equal(expected, model.Generate(prompt, length, temperature, topK, seed));
        Assert.True(expected.Distinct().Count() > 3, $"generated text is not degenerate: \"{expected}\"");
    }

    [Fact]
    public void Exported_file_decodes_as_onnx_opset_14_with_the_gates_in_onnx_order_and_the_tokenizer_and_labels_in_its_metadata()
    {
        using var tmp = new TempDir();
        var onnx = Export(tmp, SaveClassifier(tmp, CellKinds.Lstm, 2, bidirectional: true), out var trained);
        using var _ = trained;
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(onnx));
        Assert.Equal(7L, model.IrVersion);
        var opset = Assert.Single(model.OpsetImport);
        Assert.Equal(("", 14L), (opset.Domain, opset.Version));
        Assert.Equal(new[] { "tokens", "lengths" }, model.Graph.Input.Select(i => i.Name));
        Assert.Equal(new[] { "logits", "probabilities" }, model.Graph.Output.Select(o => o.Name));
        var rnns = model.Graph.Node.Where(n => n.OpType == "LSTM").ToList();
        Assert.Equal(2, rnns.Count);
        foreach (var n in rnns)
        {
            Assert.Equal("bidirectional", n.Attribute.Single(a => a.Name == "direction").S.ToStringUtf8());
            Assert.Equal(0, n.Attribute.Single(a => a.Name == "layout").I);
            Assert.Equal(12, n.Attribute.Single(a => a.Name == "hidden_size").I);
            Assert.Equal("sequence_lens", n.Input[4]);
        }
        // Every node input is a graph input, an initializer, an earlier node's output or omitted ("").
        var known = new HashSet<string>(model.Graph.Input.Select(i => i.Name).Concat(model.Graph.Initializer.Select(t => t.Name))) { "" };
        foreach (var n in model.Graph.Node)
        {
            Assert.All(n.Input, i => Assert.True(known.Contains(i), $"{n.Name} reads {i} before it is computed"));
            foreach (var o in n.Output) known.Add(o);
        }
        // B of layer 0 is (2 directions, 8*hidden): ONNX's gates i, o, f, c, input side then hidden side. dtrain starts
        // the forget gate's input-side bias at model.gate_bias (1) and its hidden side at 0: ONNX block 2 and block 6.
        var b = model.Graph.Initializer.Single(t => t.Name == "layer0_B");
        Assert.Equal(new long[] { 2, 8 * 12 }, b.Dims);
        var values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(b.RawData.Span).ToArray();
        for (var d = 0; d < 2; d++)
        {
            Assert.All(values.Skip(d * 96 + 2 * 12).Take(12), v => Assert.Equal(1f, v));
            Assert.All(values.Skip(d * 96 + 6 * 12).Take(12), v => Assert.Equal(0f, v));
            Assert.Contains(values.Skip(d * 96).Take(12), v => v != 1f && v != 0f);
        }

        // The description beside the model is the one in its metadata; it holds the tokenizer and the labels.
        var json = model.MetadataProps.Single(p => p.Key == OnnxExport.MetadataKey).Value;
        Assert.Equal(File.ReadAllText(OnnxExport.InfoPath(onnx)), json);
        var info = ReadInfo(onnx);
        Assert.Equal(("classification", "lstm", 2, true, 7L), (info.Task, info.Cell, info.Layers, info.Bidirectional, info.Step));
        Assert.Equal(trained.Tokenizer.ToState().Tokens, info.Tokenizer!.Tokens);
        Assert.Equal(("word", 0, 1), (info.Tokenizer.Kind, info.PadId, info.UnkId));
        Assert.Equal(new[] { "ham", "spam", "eggs" }, info.Labels);
        using var session = new InferenceSession(onnx);
        Assert.Equal(json, session.ModelMetadata.CustomMetadataMap[OnnxExport.MetadataKey]);
    }

    [Fact]
    public void Export_command_writes_the_model_and_its_description_and_names_what_it_cannot_do()
    {
        using var tmp = new TempDir();
        var checkpoint = SaveLanguageModel(tmp, CellKinds.Gru, 2);
        var run = CliRunner.Run(tmp.Path, "export", tmp.Path, "--format", "onnx", "-o", "lm.onnx");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("language_model, gru, 2 layer(s), step 40", run.Stdout);
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(tmp.Path, "lm.onnx")));
        Assert.Equal(2, model.Graph.Node.Count(n => n.OpType == "GRU"));
        Assert.Equal(1, model.Graph.Node.First(n => n.OpType == "GRU").Attribute.Single(a => a.Name == "linear_before_reset").I);
        Assert.True(File.Exists(Path.Combine(tmp.Path, "lm.onnx.json")));

        var format = CliRunner.Run(tmp.Path, "export", checkpoint, "--format", "torchscript", "-o", "x.pt");
        Assert.True(format.ExitCode == 2, format.ToString());
        Assert.Contains("--format \"torchscript\" is not supported; supported: onnx", format.Stderr);
        var dir = CliRunner.Run(tmp.Path, "export", checkpoint, "-o", Path.Combine("no-such-dir", "m.onnx"));
        Assert.True(dir.ExitCode == 2, dir.ToString());
        Assert.Contains("no-such-dir does not exist", dir.Stderr);
        Assert.False(File.Exists(Path.Combine(tmp.Path, "x.pt")));
    }

    private static void AssertClose(TorchSharp.torch.Tensor expected, float[] actual, string what)
    {
        var e = expected.contiguous().data<float>().ToArray();
        Assert.Equal(e.Length, actual.Length);
        var worst = e.Zip(actual, (x, y) => Math.Abs(x - y)).Max();
        Assert.True(worst <= Tolerance, $"{what}: ONNX Runtime differs from dtrain by up to {worst:G3}");
    }
}
