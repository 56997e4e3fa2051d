using System.Text;
using System.Text.Json.Nodes;
using Dtrain.Checkpoints;
using Dtrain.Inference;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Checkpoints;

/// <summary>
/// Checkpoints whose file is intact (right SHA-256) but one section is malformed: every reader says which file and which
/// section, in managed code (nothing reaches torch, whose errors abort the process), and the CLI exits 2.
/// </summary>
[Collection(TorchRngCollection.Name)]
public class CheckpointSectionTests
{
    sealed class Quiet : ITrainingObserver;

    /// <summary>Trains a tiny char LSTM (stream sampling: the checkpoint carries the hidden state) and returns its final checkpoint.</summary>
    static string TrainLm(TempDir tmp, int steps = 4)
    {
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt", steps: steps) with { Output = "lm" };
        tmp.Write("lm.json", JobSpecSerializer.Serialize(spec));
        return Trainer.Run(spec, tmp.Path, new TrainOptions(), new Quiet(), CancellationToken.None).Checkpoint!;
    }

    /// <summary>Rewrites <paramref name="path"/> with section <paramref name="section"/> replaced, under a valid checksum.</summary>
    internal static void Rewrite(string path, string section, Func<byte[], byte[]> change)
    {
        var data = CheckpointStore.ReadFile(path);
        var sections = data.Sections.ToDictionary(kv => kv.Key, kv => kv.Value);
        sections[section] = change(sections[section]);
        using var file = File.Create(path);
        CheckpointFormat.Write(file, new CheckpointData(data.Step, sections, data.CreatedAt));
    }

    static byte[] Truncate(byte[] b) => b[..(b.Length * 2 / 3)];

    static byte[] EditJson(byte[] json, Action<JsonNode> edit)
    {
        var node = JsonNode.Parse(json)!;
        edit(node);
        return Encoding.UTF8.GetBytes(node.ToJsonString());
    }

    /// <summary>Each damage of a section that inference reads, the section the error names, and what it must say.</summary>
    public static TheoryData<string, string, string, string> InferenceDamage() => new()
    {
        // Cut to two thirds: fewer bytes than the model's parameters need, refused before the model is even built.
        { TrainingCheckpoint.Model, "truncated", TrainingCheckpoint.Model, "parameters" },
        { TrainingCheckpoint.Model, "cut-short", TrainingCheckpoint.Model, "truncated" },
        { TrainingCheckpoint.Model, "garbled-header", TrainingCheckpoint.Model, "entry" },
        { TrainingCheckpoint.Model, "trailing", TrainingCheckpoint.Model, "unexpected byte" },
        { TrainingCheckpoint.State, "broken-json", TrainingCheckpoint.State, "" },
        { TrainingCheckpoint.State, "wrong-step", TrainingCheckpoint.State, "says step 99" },
        { TrainingCheckpoint.Tokenizer, "broken-json", TrainingCheckpoint.Tokenizer, "" },
        { TrainingCheckpoint.Tokenizer, "no-unk", TrainingCheckpoint.Tokenizer, "token 1" },
        { TrainingCheckpoint.Labels, "broken-json", TrainingCheckpoint.Labels, "" },
        { TrainingCheckpoint.Spec, "invalid-utf8", TrainingCheckpoint.Spec, "UTF-8" },
        // A spec that parses but describes a far larger model than the weights hold: refused before it is built.
        { TrainingCheckpoint.Spec, "huge-model", TrainingCheckpoint.Model, "hidden 8192" },
    };

    static byte[] Damage(string section, string how, byte[] bytes) => how switch
    {
        "truncated" => Truncate(bytes),
        "cut-short" => bytes[..^8],
        "garbled-header" => [.. bytes[..1], .. "\u0005zzzzz"u8, .. bytes[1..]],
        "trailing" => [.. bytes, 0, 1, 2],
        "broken-json" => bytes[..(bytes.Length / 2)],
        "wrong-step" => EditJson(bytes, j => j["step"] = 99),
        "no-unk" => EditJson(bytes, j => j["tokens"]![1] = "<nope>"),
        "invalid-utf8" => [.. bytes[..10], 0xFF, 0xFE, .. bytes[10..]],
        // A spec that still parses but describes a model of ~2 billion parameters: refused before it is built.
        "huge-model" => EditJson(bytes, j => { j["model"]!["hidden_size"] = 8192; j["model"]!["layers"] = 4; }),
        _ => throw new ArgumentException(how),
    };

    [Theory]
    [MemberData(nameof(InferenceDamage))]
    public void A_malformed_section_fails_loading_naming_the_file_and_the_section(string section, string how, string named, string expected)
    {
        using var tmp = new TempDir();
        var checkpoint = TrainLm(tmp);
        Rewrite(checkpoint, section, b => Damage(section, how, b));
        // The file itself is intact: only the section's contents are wrong.
        Assert.NotNull(CheckpointStore.ReadFile(checkpoint));

        var e = Assert.Throws<CorruptCheckpointException>(() => TrainedModel.Load(checkpoint));
        Assert.Equal(checkpoint, e.Path);
        Assert.Equal(named, e.Section);
        Assert.Contains(checkpoint, e.Message);
        Assert.Contains($"section {named}", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData(TrainingCheckpoint.Optimizer, "truncated", "truncated")]
    [InlineData(TrainingCheckpoint.Optimizer, "other-optimizer", "SGD")]
    [InlineData(TrainingCheckpoint.Rng, "garbled", "mt19937")]
    [InlineData(TrainingCheckpoint.Rng, "truncated", "bytes")]
    [InlineData(TrainingCheckpoint.Carried, "truncated", "")]
    [InlineData(TrainingCheckpoint.Carried, "reshaped", "shape")]
    public void A_malformed_training_section_fails_resuming_naming_the_file_and_the_section(string section, string how, string expected)
    {
        using var tmp = new TempDir();
        var checkpoint = TrainLm(tmp);
        Rewrite(checkpoint, section, b => how switch
        {
            "truncated" => Truncate(b),
            // The state of another optimizer is well-formed but not this job's.
            "other-optimizer" => [.. "\u0003SGD"u8, .. b[5..]],
            // left = 0, seeded = 0: a state libtorch refuses — by aborting the process, were it handed over.
            "garbled" => [.. b[..8], 0, 0, 0, 0, 0, 0, 0, 0, .. b[16..]],
            // rank 3, shape (2, 4, 32) -> (2, 4, 31) with the same byte count otherwise.
            "reshaped" => Reshape(b),
            _ => throw new ArgumentException(how),
        });
        var spec = JobSpecSerializer.Load(Path.Combine(tmp.Path, "lm.json")) with { Training = TestJobs.CharLm("t.txt").Training with { MaxSteps = 6 } };
        var e = Assert.Throws<CorruptCheckpointException>(() =>
            Trainer.Run(spec, tmp.Path, new TrainOptions { Resume = true }, new Quiet(), CancellationToken.None));
        Assert.Equal(checkpoint, e.Path);
        Assert.Equal(section, e.Section);
        Assert.Contains(expected, e.Message);
    }

    static byte[] Reshape(byte[] carried)
    {
        var copy = carried.ToArray();
        // int32 rank, then three int64 sizes: the hidden size is the third.
        Assert.Equal(3, BitConverter.ToInt32(copy, 0));
        Assert.Equal(32, BitConverter.ToInt64(copy, 4 + 16));
        BitConverter.GetBytes(31L).CopyTo(copy, 4 + 16);
        return copy;
    }

    [Fact]
    public void Non_finite_metrics_are_checkpointed_and_read_back()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("t.txt");
        using var engine = new TrainingEngine(spec, 20, 0, TorchSharp.torch.CPU);
        var tokenizer = Dtrain.Data.TokenizerFactory.Fit(spec.Tokenizer, [TestJobs.Text(1)]);
        var metrics = new EvalMetrics(double.NaN, 0, Perplexity: double.PositiveInfinity, BitsPerToken: double.NegativeInfinity);
        var state = new TrainingState { Step = 7, LastEval = metrics };
        var store = new CheckpointStore(Path.Combine(tmp.Path, "checkpoints"), 3);
        var path = store.Save(TrainingCheckpoint.Capture(spec, tokenizer, Dtrain.Data.LabelSet.Empty, state, engine));

        var data = CheckpointStore.ReadFile(path);
        Assert.Contains("\"NaN\"", Encoding.UTF8.GetString(data.Sections[TrainingCheckpoint.State]));
        var back = TrainingCheckpoint.ReadState(data, path).LastEval!;
        Assert.True(double.IsNaN(back.Loss));
        Assert.Equal(double.PositiveInfinity, back.Perplexity);
        Assert.Equal(double.NegativeInfinity, back.BitsPerToken);
        Assert.Equal(0, back.Count);
        Assert.Equal("no validation data (the validation split is empty): loss and metrics are undefined", back.ToString());
        Assert.Equal("loss inf, perplexity inf (not finite: the model diverged)", new EvalMetrics(double.PositiveInfinity, 10, Perplexity: double.PositiveInfinity).ToString());
        // Finite but huge: in scientific notation (it printed 31 digits).
        Assert.Equal("loss 8.700E+029, perplexity inf (not finite: the model diverged)", new EvalMetrics(8.7e29, 10, Perplexity: double.PositiveInfinity).ToString());
    }

    [Fact]
    public void A_classifier_whose_validation_split_is_empty_trains_saves_and_evaluates()
    {
        // Three records, one per label: the seeded split moves its validation record back to training (a label
        // must be learnable), so the validation split is empty and every metric is NaN.
        using var tmp = new TempDir();
        tmp.Write("few.jsonl", "{\"text\":\"red apple\",\"label\":\"a\"}\n{\"text\":\"blue sky\",\"label\":\"b\"}\n{\"text\":\"green leaf\",\"label\":\"c\"}\n");
        var spec = TestJobs.Classifier("few.jsonl", steps: 3) with { Output = "few" };
        var train = CliRunner.Run(tmp.Path, "train", tmp.Write("few.json", JobSpecSerializer.Serialize(spec)));
        Assert.True(train.ExitCode == 0, train.ToString());
        Assert.Contains("validation: no validation data (the validation split is empty)", train.Stdout);
        Assert.Single(new CheckpointStore(Path.Combine(tmp.Path, "few", "checkpoints"), 3).List());
        var eval = CliRunner.Run(tmp.Path, "eval", "few");
        Assert.True(eval.ExitCode == 0, eval.ToString());
        Assert.Contains("0 examples", eval.Stdout);
        var predict = CliRunner.Run(tmp.Path, "predict", "few", "red apple");
        Assert.True(predict.ExitCode == 0, predict.ToString());
    }

    [Theory]
    [InlineData("eval", TrainingCheckpoint.Model)]
    [InlineData("generate", TrainingCheckpoint.State)]
    [InlineData("generate", TrainingCheckpoint.Tokenizer)]
    [InlineData("train --resume", TrainingCheckpoint.Optimizer)]
    [InlineData("train --resume", TrainingCheckpoint.Rng)]
    [InlineData("train --resume", TrainingCheckpoint.Carried)]
    public void The_cli_exits_2_naming_the_checkpoint_and_the_section(string verb, string section)
    {
        using var tmp = new TempDir();
        var checkpoint = TrainLm(tmp);
        Rewrite(checkpoint, section, section == TrainingCheckpoint.Rng ? b => [.. b[..8], 0, 0, 0, 0, .. b[12..]] : Truncate);
        var args = verb == "train --resume" ? new[] { "train", "lm.json", "--resume", "--max-steps", "6" } : [verb, "lm"];
        var r = CliRunner.Run(tmp.Path, args);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains($"corrupt checkpoint {checkpoint}: section {section}:", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void The_checker_accepts_what_every_optimizer_writes_after_training()
    {
        foreach (var (kind, momentum) in new[] { (OptimizerKinds.Sgd, 0.0), (OptimizerKinds.Sgd, 0.9), (OptimizerKinds.Adam, 0.0), (OptimizerKinds.AdamW, 0.0) })
        {
            using var tmp = new TempDir();
            tmp.Write("t.txt", TestJobs.Text());
            var spec = TestJobs.CharLm("t.txt", steps: 3) with { Optimizer = new OptimizerSpec { Kind = kind, Lr = 0.01, Momentum = momentum }, Output = "out" };
            Trainer.Run(spec, tmp.Path, new TrainOptions(), new Quiet(), CancellationToken.None);
            // Resuming restores (and so checks) weights, optimizer state, RNG and carried state.
            var summary = Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 4 } }, tmp.Path, new TrainOptions { Resume = true }, new Quiet(), CancellationToken.None);
            Assert.Equal(4, summary.Steps);
        }
    }

    [Theory]
    [InlineData(48)]
    [InlineData(16)]
    public void Resuming_after_the_specs_model_changed_says_so_and_does_not_call_the_checkpoint_corrupt(int hidden)
    {
        using var tmp = new TempDir();
        var checkpoint = TrainLm(tmp);
        var spec = TestJobs.CharLm("t.txt", steps: 6) with { Output = "lm" };
        tmp.Write("changed.json", JobSpecSerializer.Serialize(spec with { Model = spec.Model with { HiddenSize = hidden } }));
        var r = CliRunner.Run(tmp.Path, "train", "changed.json", "--resume");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains($"checkpoint {checkpoint} does not match the spec changed.json: $.model.hidden_size is {hidden} in the spec, 32 in the checkpoint", r.Stderr);
        Assert.DoesNotContain("corrupt", r.Stderr);

        // The coordinator's check of a resumed job names the field the same way, and where the checkpoint came from.
        var e = Assert.Throws<SpecException>(() => Dtrain.Server.ResumePoint.OfFile("an uploaded checkpoint", checkpoint)
            .CheckCompatible(spec with { Model = spec.Model with { HiddenSize = hidden } }, "changed.json"));
        Assert.Contains($"$.model.hidden_size: {hidden} here, 32 in the checkpoint this job resumes from (an uploaded checkpoint)", e.Message);
    }
}
