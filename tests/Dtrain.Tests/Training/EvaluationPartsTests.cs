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
/// ranks, streams or batches not divisible by the ranks, the whole split or its first eval_batches batches. Each part
/// evaluated from only the tokens or examples a cluster sends its rank (<see cref="Evaluator.LanguageModelRange"/>,
/// <see cref="Evaluator.ClassificationRange"/>, read by the whole split's positions) gives the same sums.
/// </summary>
[Collection(TorchRngCollection.Name)]
public class EvaluationPartsTests
{
    static EvalMetrics Combined(int ranks, Func<EvalPart, EvalSums> part) =>
        EvalSums.Combine([.. Enumerable.Range(0, ranks).Select(r => part(new EvalPart(r, ranks)))]).ToMetrics();

    /// <summary>Only the validation tokens a rank evaluating <paramref name="part"/> is sent (reading any other fails).</summary>
    static PreparedData TokensOf(PreparedData data, int streams, int seqLen, int evalBatches, EvalPart part)
    {
        var tokens = data.ValidationTokens;
        var (start, end) = Evaluator.LanguageModelRange(tokens.Length, streams, seqLen, evalBatches, part);
        return new PreparedData { Tokenizer = data.Tokenizer, Labels = data.Labels, ValidationStream = new PartTokenSequence(tokens[(int)start..(int)end], start, tokens.Length) };
    }

    /// <summary>Only the validation examples a rank evaluating <paramref name="part"/> is sent (reading any other fails).</summary>
    static PreparedData ExamplesOf(PreparedData data, int batchSize, int evalBatches, EvalPart part)
    {
        var count = data.ValidationSequences.Count;
        var (start, end) = Evaluator.ClassificationRange(count, batchSize, evalBatches, part);
        return new PreparedData
        {
            Tokenizer = data.Tokenizer, Labels = data.Labels,
            ValidationRecords = new PartRecordSource([.. data.ValidationSequences.Skip(start).Take(end - start)], [.. data.ValidationLabels.Skip(start).Take(end - start)], start, count),
        };
    }

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
            var sent = Combined(ranks, part => task.EvaluatePart(engine, TokensOf(data, streams, spec.Training.SeqLen, evalBatches, part), streams, evalBatches, part));
            Assert.Equal(m.Count, sent.Count);
            Assert.Equal(m.Loss, sent.Loss);
            // About 1/N of the split each (a whole number of streams; the last target is the next stream's first token).
            var largest = Enumerable.Range(0, ranks).Max(r => Evaluator.LanguageModelRange(data.ValidationTokens.Length, streams, spec.Training.SeqLen, 0, new EvalPart(r, ranks)) is var (a, b) ? b - a : 0);
            Assert.True(largest <= (data.ValidationTokens.Length - 1) / streams * ((streams + ranks - 1) / ranks) + 1, $"{n} ranks: a part of {largest} of {data.ValidationTokens.Length} tokens");
        }
        // More ranks than streams: the extra ranks evaluate nothing, the sums are still the whole's.
        var many = Combined(streams + 2, part => task.EvaluatePart(engine, data, streams, evalBatches, part));
        Assert.Equal(whole.Count, many.Count);
        Assert.True(Math.Abs(many.Loss - whole.Loss) <= 1e-6 * Math.Abs(whole.Loss));
        var manySent = Combined(streams + 2, part => task.EvaluatePart(engine, TokensOf(data, streams, spec.Training.SeqLen, evalBatches, part), streams, evalBatches, part));
        Assert.Equal(many.Count, manySent.Count);
        Assert.Equal(many.Loss, manySent.Loss);
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
            var sent = Combined(ranks, part => task.EvaluatePart(engine, ExamplesOf(data, batchSize, evalBatches, part), batchSize, evalBatches, part));
            Assert.Equal(m, sent);
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

    [Fact]
    public void A_part_held_refuses_reads_outside_it_naming_both_ranges()
    {
        var tokens = new PartTokenSequence([5, 6, 7], 10, 20);
        var read = new int[2];
        tokens.Read(11, read);
        Assert.Equal([6, 7], read);
        Assert.Equal(20, tokens.Length);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => tokens.Read(12, read));
        Assert.Contains("tokens [12, 14) of the 20 are not in the part held here, [10, 13)", e.Message);
        Assert.Throws<ArgumentException>(() => new PartTokenSequence([1, 2], 19, 20));
        var records = new PartRecordSource([[1], [2]], [0, 1], 4, 9);
        Assert.Equal(9, records.Count);
        Assert.Equal(1, records.Label(5));
        Assert.Equal([1], records.Tokens(4));
        Assert.Contains("record 6 of the 9 is not in the part held here, [4, 6)", Assert.Throws<ArgumentOutOfRangeException>(() => records.Label(6)).Message);
    }
}
