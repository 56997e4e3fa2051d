using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static Dtrain.Tests.Data.Datasets.PrepareTestSupport;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>
/// The batch sources read a prepared split (memory-mapped shards, read across shard boundaries) through the same code
/// as the in-memory arrays: every row of every step, whatever the rank's range, is the same.
/// </summary>
public sealed class DatasetBatchesTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    static void AssertSameRows(IBatchSource expected, IBatchSource actual, int steps)
    {
        Assert.Equal(expected.StepsPerEpoch, actual.StepsPerEpoch);
        for (var step = 0; step < steps; step++)
        {
            var at = new StepPosition(step / expected.StepsPerEpoch, step % expected.StepsPerEpoch);
            var rows = expected.RowsAt(at);
            Assert.Equal(rows, actual.RowsAt(at));
            foreach (var (start, count) in new[] { (0, rows), (0, rows / 2), (rows / 2, rows - rows / 2), (1, rows) })
            {
                var e = expected.GetRows(at, start, count);
                var a = actual.GetRows(at, start, count);
                Assert.Equal(e?.Count ?? 0, expected.CountAt(at, start, count));
                Assert.Equal(e?.Count ?? 0, actual.CountAt(at, start, count));
                if (e is null) { Assert.Null(a); continue; }
                Assert.NotNull(a);
                Assert.Equal((e.Rows, e.Width, e.Count), (a.Rows, a.Width, a.Count));
                Assert.Equal(e.Inputs, a.Inputs);
                Assert.Equal(e.Targets, a.Targets);
                Assert.Equal(e.Lengths, a.Lengths);
            }
        }
    }

    [Theory]
    [InlineData(LmSamplingKinds.Stream)]
    [InlineData(LmSamplingKinds.Random)]
    public void A_language_model_reads_the_same_rows_from_a_prepared_split_as_from_memory(string sampling)
    {
        var file = dir.Write("corpus.txt", string.Concat(Enumerable.Range(0, 80).Select(i => $"Line {i}: words and 😀 more {i % 7}\n")));
        var o = Options(Path.Combine(dir.Path, "ds"), [file]);
        DatasetPreparer.Prepare(o);
        var memory = PreparedData.Load(Spec(o, "text", "corpus.txt"), dir.Path);
        using var ds = PreparedDataset.Open(o.Output);
        Assert.True(ds.Train.Entry.Shards.Count > 5, "rows cross shard boundaries");
        AssertSameRows(new LanguageModelBatches(memory.TrainTokens, 6, 20, sampling, 5), new LanguageModelBatches(ds.Train, 6, 20, sampling, 5), 40);
    }

    [Fact]
    public void A_classifier_reads_the_same_rows_from_a_prepared_split_as_from_memory()
    {
        var file = dir.Write("c.jsonl", string.Concat(Enumerable.Range(0, 90).Select(i => $"{{\"text\":\"message {i} {new string('w', i % 17)} end\",\"label\":\"{(i % 3 == 0 ? "spam" : "ham")}\"}}\n")));
        var o = Options(Path.Combine(dir.Path, "ds"), [file]) with { Task = TaskKinds.Classification, Seed = 3 };
        DatasetPreparer.Prepare(o);
        var memory = PreparedData.Load(Spec(o, "jsonl", "c.jsonl"), dir.Path);
        using var ds = PreparedDataset.Open(o.Output);
        Assert.True(ds.Train.Entry.Shards.Count > 3, "records in several shards");
        AssertSameRows(new ClassificationBatches(memory.TrainSequences, memory.TrainLabels, 8, 11), new ClassificationBatches(ds.Train, 8, 11), 30);
    }
}
