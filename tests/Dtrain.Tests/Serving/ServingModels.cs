using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Tests.Serving;

/// <summary>Tiny trained models for the model-server tests: a word classifier and a char and a word language model.</summary>
public sealed class ServingModels : IDisposable
{
    public const int ClassifierMaxLength = 120;

    readonly TempDir tmp = new();

    public ServingModels()
    {
        Classifier = SaveClassifier();
        CharLm = SaveLanguageModel(TokenizerKinds.Char, "char");
        WordLm = SaveLanguageModel(TokenizerKinds.Word, "word");
    }

    public string Classifier { get; }
    public string CharLm { get; }
    public string WordLm { get; }
    public string Dir => tmp.Path;

    string SaveClassifier()
    {
        var spec = TestJobs.Classifier("unused");
        spec = spec with { Data = spec.Data with { MaxLength = ClassifierMaxLength } };
        var rows = Enumerable.Range(0, 40).Select(i => i % 2 == 0 ? ($"win money now offer {i}", 0) : ($"meeting notes for project {i}", 1)).ToList();
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, rows.Select(r => r.Item1));
        var labels = new LabelSet(["spam", "ham", "other"]);
        var sequences = rows.Select(r => PreparedData.EncodeNonEmpty(tokenizer, r.Item1)).ToArray();
        var source = new ClassificationBatches(sequences, [.. rows.Select(r => r.Item2)], 8, seed: 1, shuffle: true);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, labels.Count, CPU);
        for (var k = 0; k < 20; k++)
        {
            var position = new StepPosition(k / source.StepsPerEpoch, k % source.StepsPerEpoch);
            using var batch = source.Get(position, 0, source.RowsAt(position))!;
            var stats = engine.ComputeGradients(batch, carryState: false);
            engine.ApplyGradients(stats.Count, 0.03);
        }
        var store = new CheckpointStore(Path.Combine(tmp.Path, "clf"), 3);
        return store.Save(TrainingCheckpoint.Capture(spec, tokenizer, labels, new TrainingState { Step = 20 }, engine));
    }

    string SaveLanguageModel(string tokenizerKind, string name)
    {
        var spec = TestJobs.CharLm("unused") with
        {
            Tokenizer = new TokenizerSpec { Kind = tokenizerKind },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 8, HiddenSize = 16 },
        };
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, [TestJobs.Text(2)]);
        var source = new LanguageModelBatches(tokenizer.Encode(TestJobs.Text()), 4, 16, LmSamplingKinds.Stream, seed: 1);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        for (var k = 0; k < 30; k++)
        {
            using var batch = source.Get(new StepPosition(k / source.StepsPerEpoch, k % source.StepsPerEpoch), 0, 4)!;
            var stats = engine.ComputeGradients(batch, carryState: true);
            engine.ApplyGradients(stats.Count, 0.03);
        }
        var store = new CheckpointStore(Path.Combine(tmp.Path, name), 3);
        return store.Save(TrainingCheckpoint.Capture(spec, tokenizer, LabelSet.Empty, new TrainingState { Step = 30 }, engine));
    }

    public void Dispose() => tmp.Dispose();
}
