using Dtrain.Specs;

namespace Dtrain.Tests.Support;

/// <summary>Small, fast job specs and data for tests.</summary>
public static class TestJobs
{
    /// <summary>A repetitive text a tiny char model learns in a few dozen steps.</summary>
    public static string Text(int repeats = 60) =>
        string.Concat(Enumerable.Repeat("the cat sat on the mat. the dog sat on the log. ", repeats));

    public static JobSpec CharLm(string trainPath, string cell = CellKinds.Lstm, int steps = 20) => new()
    {
        Name = "test-lm",
        Task = TaskKinds.LanguageModel,
        Data = new DataSpec { Format = DataFormats.Text, Train = trainPath, ValidationFraction = 0.1 },
        Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Char },
        Model = new ModelSpec { Cell = cell, Layers = 2, EmbeddingDim = 16, HiddenSize = 32 },
        Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
        Training = new TrainingSpec { BatchSize = 4, SeqLen = 16, MaxSteps = steps, EvalInterval = 0, CheckpointInterval = 0, Seed = 3, Threads = 1 },
    };

    /// <summary>Two classes told apart by a keyword, in JSONL.</summary>
    public static string ClassificationJsonl(int n = 120)
    {
        var lines = new List<string>();
        for (var i = 0; i < n; i++)
        {
            var spam = i % 2 == 0;
            var text = spam ? $"win money now offer {i}" : $"meeting notes for project {i}";
            lines.Add($"{{\"text\": \"{text}\", \"label\": \"{(spam ? "spam" : "ham")}\"}}");
        }
        return string.Join('\n', lines) + "\n";
    }

    public static JobSpec Classifier(string trainPath, string format = DataFormats.Jsonl, string cell = CellKinds.Lstm, int steps = 30) => new()
    {
        Name = "test-clf",
        Task = TaskKinds.Classification,
        Data = new DataSpec { Format = format, Train = trainPath, ValidationFraction = 0.2 },
        Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word },
        Model = new ModelSpec { Cell = cell, Layers = 1, EmbeddingDim = 16, HiddenSize = 24 },
        Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
        Training = new TrainingSpec { BatchSize = 8, MaxSteps = steps, EvalInterval = 0, CheckpointInterval = 0, Seed = 5, Threads = 1 },
    };
}
