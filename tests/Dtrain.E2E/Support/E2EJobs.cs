using System.Text;
using Dtrain.Specs;

namespace Dtrain.E2E.Support;

/// <summary>Small job specs and data for the container tests (written into a temp dir; the CLI uploads the data).</summary>
public static class E2EJobs
{
    /// <summary>
    /// A char-level LSTM on a few KB of Moby Dick (train and a separate validation file), evaluated and checkpointed at
    /// its last step. Returns the spec's path.
    /// </summary>
    public static string MobyDickLm(TempDir dir, int steps = 30, int batch = 12)
    {
        var text = File.ReadAllText(RepoFiles.PathOf("data", "moby-dick", "moby-dick.txt"));
        // Past the front matter; 8 KB to train on, the next 2 KB to validate on.
        var start = text.IndexOf("Call me Ishmael", StringComparison.Ordinal);
        Assert.True(start >= 0, "data/moby-dick/moby-dick.txt lacks its first sentence");
        dir.Write("moby-train.txt", text.Substring(start, 8000));
        dir.Write("moby-valid.txt", text.Substring(start + 8000, 2000));
        var spec = new JobSpec
        {
            Name = "e2e-lm",
            Task = TaskKinds.LanguageModel,
            Data = new DataSpec { Format = DataFormats.Text, Train = "moby-train.txt", Validation = "moby-valid.txt" },
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Char },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 16, HiddenSize = 48 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
            Training = new TrainingSpec
            {
                BatchSize = batch,
                SeqLen = 32,
                Epochs = 100,
                MaxSteps = steps,
                Seed = 11,
                Threads = 1,
                EvalInterval = steps,
                CheckpointInterval = steps,
            },
        };
        return dir.Write("lm.json", JobSpecSerializer.Serialize(spec));
    }

    /// <summary>A job that runs for minutes unless something stops it: a tiny model, many steps, no evaluation.</summary>
    public static string LongLm(TempDir dir, int steps = 5000)
    {
        dir.Write("long.txt", string.Concat(Enumerable.Repeat("the cat sat on the mat. the dog sat on the log. ", 200)));
        var spec = new JobSpec
        {
            Name = "e2e-long",
            Task = TaskKinds.LanguageModel,
            Data = new DataSpec { Format = DataFormats.Text, Train = "long.txt", ValidationFraction = 0.1 },
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Char },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 8, HiddenSize = 16 },
            Training = new TrainingSpec { BatchSize = 12, SeqLen = 16, Epochs = 1000, MaxSteps = steps, Seed = 3, Threads = 1, EvalInterval = 0, CheckpointInterval = 0 },
        };
        return dir.Write("long.json", JobSpecSerializer.Serialize(spec));
    }

    /// <summary>A job of a few seconds (checkpointed at its end).</summary>
    public static string ShortLm(TempDir dir, string name = "short.json", int steps = 10)
    {
        dir.Write("short.txt", string.Concat(Enumerable.Repeat("the cat sat on the mat. the dog sat on the log. ", 60)));
        var spec = new JobSpec
        {
            Name = "e2e-short",
            Task = TaskKinds.LanguageModel,
            Data = new DataSpec { Format = DataFormats.Text, Train = "short.txt", ValidationFraction = 0.1 },
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Char },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 8, HiddenSize = 16 },
            Training = new TrainingSpec { BatchSize = 8, SeqLen = 16, Epochs = 100, MaxSteps = steps, Seed = 5, Threads = 1, EvalInterval = steps, CheckpointInterval = steps },
        };
        return dir.Write(name, JobSpecSerializer.Serialize(spec));
    }

    /// <summary>
    /// Spam/ham classification on a few hundred SpamAssassin messages: every 20th line of the bundled JSONL to train on
    /// (the file is sorted by label), lines 10 past those to validate on. Returns the spec's path.
    /// </summary>
    public static string SpamClassifier(TempDir dir, int steps = 60, int batch = 16)
    {
        var lines = File.ReadAllLines(RepoFiles.PathOf("data", "spam-assassin", "spam-assassin.jsonl"), Encoding.UTF8);
        dir.Write("spam-train.jsonl", string.Join('\n', lines.Where((_, i) => i % 20 == 0)) + "\n");
        dir.Write("spam-valid.jsonl", string.Join('\n', lines.Where((_, i) => i % 20 == 10)) + "\n");
        var spec = new JobSpec
        {
            Name = "e2e-clf",
            Task = TaskKinds.Classification,
            Data = new DataSpec { Format = DataFormats.Jsonl, Train = "spam-train.jsonl", Validation = "spam-valid.jsonl", MaxLength = 400 },
            Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word, Lowercase = true, MinFrequency = 2 },
            Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 16, HiddenSize = 24 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
            Training = new TrainingSpec
            {
                BatchSize = batch,
                Epochs = 100,
                MaxSteps = steps,
                Seed = 5,
                Threads = 1,
                EvalInterval = steps,
                CheckpointInterval = steps,
            },
        };
        return dir.Write("clf.json", JobSpecSerializer.Serialize(spec));
    }
}
