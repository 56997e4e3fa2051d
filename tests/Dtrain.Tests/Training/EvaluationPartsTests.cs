using Dtrain.Data;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using static TorchSharp.torch;

namespace Dtrain.Tests.Training;

/// <summary>
/// A data-parallel job's evaluation split over its ranks (<see cref="EvalPart"/>): the parts' sums combined
/// (<see cref="EvalSums.Combine"/>) give one process's evaluation — a language model's mean loss within 1e-6 relative
/// (float summation order), its token count exactly; a classifier's accuracy and macro-F1 exactly — for 1, 2 and 3
/// ranks, streams or batches not divisible by the ranks, the whole split or its first eval_batches batches.
/// </summary>
[Collection(TorchRngCollection.Name)]
public class EvaluationPartsTests
{
    static EvalMetrics Combined(int ranks, Func<EvalPart, EvalSums> part) =>
        EvalSums.Combine([.. Enumerable.Range(0, ranks).Select(r => part(new EvalPart(r, ranks)))]).ToMetrics();

    [Theory]
    [InlineData(5, 0)]
    [InlineData(5, 3)]
    [InlineData(4, 0)]
    [InlineData(7, 2)]
    public void A_language_model_s_parts_add_up_to_one_process_s_evaluation(int streams, int evalBatches)
    {
        var spec = TestJobs.CharLm("unused");
        var text = TestJobs.Text(40);
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, [text]);
        var data = TrainingTasks.For(spec).Prepare(spec, tokenizer, null,
            new LoadedDataset([new TextRecord(text, null, "t.txt", 1)], [new TextRecord(text, null, "v.txt", 1)], DataReport.Empty));
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        var task = engine.TrainingTask;
        var whole = task.Evaluate(engine, data, streams, evalBatches);
        Assert.True(whole.Count > 0);
        for (var ranks = 1; ranks <= 3; ranks++)
        {
            var n = ranks;
            var m = Combined(ranks, part => task.EvaluatePart(engine, data, streams, evalBatches, part));
            Assert.Equal(whole.Count, m.Count);
            Assert.True(Math.Abs(m.Loss - whole.Loss) <= 1e-6 * Math.Abs(whole.Loss), $"{n} ranks: loss {m.Loss:R} vs one process {whole.Loss:R}");
            Assert.True(Math.Abs(m.Perplexity!.Value - whole.Perplexity!.Value) <= 1e-6 * whole.Perplexity.Value);
        }
        // More ranks than streams: the extra ranks evaluate nothing, the sums are still the whole's.
        var many = Combined(streams + 2, part => task.EvaluatePart(engine, data, streams, evalBatches, part));
        Assert.Equal(whole.Count, many.Count);
        Assert.True(Math.Abs(many.Loss - whole.Loss) <= 1e-6 * Math.Abs(whole.Loss));
    }

    [Theory]
    [InlineData(4, 0)]
    [InlineData(3, 0)]
    [InlineData(4, 2)]
    public void A_classifier_s_parts_give_exactly_one_process_s_accuracy_and_macro_f1(int batchSize, int evalBatches)
    {
        var spec = TestJobs.Classifier("unused");
        string[] lines = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "on the mat sat a cat"];
        TextRecord R(int i) => new($"{lines[i % lines.Length]} {(i % 3 == 0 ? "win money" : "notes")} {i}", i % 3 == 0 ? "spam" : (i % 3 == 1 ? "ham" : "other"), "d.jsonl", i + 1);
        var loaded = new LoadedDataset([.. Enumerable.Range(0, 30).Select(R)], [.. Enumerable.Range(30, 13).Select(R)], DataReport.Empty);
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, loaded.Train.Select(r => r.Text));
        var data = TrainingTasks.For(spec).Prepare(spec, tokenizer, null, loaded);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, data.Labels.Count, CPU);
        var task = engine.TrainingTask;
        var whole = task.Evaluate(engine, data, batchSize, evalBatches);
        Assert.Equal(evalBatches == 0 ? 13 : Math.Min(13, evalBatches * batchSize), whole.Count);
        for (var ranks = 1; ranks <= 3; ranks++)
        {
            var n = ranks;
            var m = Combined(ranks, part => task.EvaluatePart(engine, data, batchSize, evalBatches, part));
            Assert.Equal(whole.Count, m.Count);
            Assert.Equal(whole.Accuracy, m.Accuracy);
            Assert.Equal(whole.MacroF1, m.MacroF1);
            Assert.True(Math.Abs(m.Loss - whole.Loss) <= 1e-9 * Math.Abs(whole.Loss), $"{n} ranks: loss {m.Loss:R} vs one process {whole.Loss:R}");
        }
    }

    [Fact]
    public void Per_class_counts_give_the_metrics_of_the_predictions_they_count_and_parts_combine()
    {
        long[] predicted = [0, 1, 2, 2, 1, 0, 0, 2];
        long[] actual = [0, 1, 1, 2, 2, 0, 1, 2];
        var whole = ClassificationMetrics.Compute(predicted, actual, 4);
        var (c, tp, fp, fn) = ClassificationMetrics.Count(predicted, actual, 4);
        Assert.Equal(whole, ClassificationMetrics.FromCounts(c, actual.Length, tp, fp, fn));
        EvalSums Part(int from, int to)
        {
            var (pc, ptp, pfp, pfn) = ClassificationMetrics.Count(predicted[from..to], actual[from..to], 4);
            return new EvalSums(to - from, to - from, pc, ptp, pfp, pfn);
        }
        var m = EvalSums.Combine([Part(0, 3), Part(3, 3), Part(3, 8)]).ToMetrics();
        Assert.Equal(whole.Accuracy, m.Accuracy);
        Assert.Equal(whole.MacroF1, m.MacroF1);
        Assert.Equal(1.0, m.Loss);
        Assert.Throws<ArgumentException>(() => EvalSums.Combine([Part(0, 3), new EvalSums(1, 1)]));
        Assert.Throws<ArgumentException>(() => new EvalPart(2, 2).Of(10));
    }
}
