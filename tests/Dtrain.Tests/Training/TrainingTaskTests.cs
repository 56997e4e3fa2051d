using Dtrain.Data;
using Dtrain.Models;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using static TorchSharp.torch;

namespace Dtrain.Tests.Training;

/// <summary>
/// The task abstraction (<see cref="ITrainingTask"/>) against the code it replaced: each task's batches, loss and
/// evaluation on a tiny dataset must give the numbers the per-kind branches gave (written out here as references).
/// </summary>
[Collection(TorchRngCollection.Name)]
public class TrainingTaskTests
{
    static readonly string[] Lines = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "on the mat sat a cat"];

    static LoadedDataset LmData() =>
        new([new TextRecord(TestJobs.Text(8), null, "t.txt", 1)], [new TextRecord(TestJobs.Text(2), null, "t.txt", 9)], DataReport.Empty);

    static LoadedDataset ClfData()
    {
        TextRecord R(int i) => new($"{Lines[i % Lines.Length]} {(i % 3 == 0 ? "win money" : "notes")} {i}", i % 3 == 0 ? "spam" : "ham", "d.jsonl", i + 1);
        return new(Enumerable.Range(0, 30).Select(R).ToArray(), Enumerable.Range(30, 11).Select(R).ToArray(), DataReport.Empty);
    }

    static (JobSpec Spec, PreparedData Data) Lm(string sampling = LmSamplingKinds.Stream)
    {
        var spec = TestJobs.CharLm("unused");
        spec = spec with { Training = spec.Training with { LmSampling = sampling } };
        var data = LmData();
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, data.Train.Select(r => r.Text));
        return (spec, TrainingTasks.For(spec).Prepare(spec, tokenizer, null, data));
    }

    static (JobSpec Spec, PreparedData Data) Clf()
    {
        var spec = TestJobs.Classifier("unused");
        var data = ClfData();
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, data.Train.Select(r => r.Text));
        return (spec, TrainingTasks.For(spec).Prepare(spec, tokenizer, null, data));
    }

    [Fact]
    public void A_spec_names_its_task_by_the_documented_string_and_an_unknown_one_is_refused_naming_the_known()
    {
        Assert.IsType<LanguageModelTask>(TrainingTasks.For("language_model"));
        Assert.IsType<ClassificationTask>(TrainingTasks.For("classification"));
        Assert.Equal(TaskKinds.All, TrainingTasks.All.Select(t => t.Kind));
        Assert.Same(TrainingTasks.Classification, TrainingTasks.For(TestJobs.Classifier("x")));
        Assert.Null(TrainingTasks.Find("regression"));
        var e = Assert.Throws<ArgumentException>(() => TrainingTasks.For("regression"));
        Assert.Contains("\"regression\"", e.Message);
        Assert.Contains("\"language_model\" or \"classification\"", e.Message);
    }

    [Fact]
    public void Language_model_data_is_the_joined_text_encoded_and_its_batches_are_the_spec_s_stream()
    {
        var (spec, data) = Lm();
        var task = TrainingTasks.For(spec);
        Assert.Equal(data.Tokenizer.Encode(TestJobs.Text(8)), data.TrainTokens);
        Assert.Equal(data.Tokenizer.Encode(TestJobs.Text(2)), data.ValidationTokens);
        Assert.Empty(data.Labels.Names);
        Assert.Equal(data.TrainTokens.Length, task.TrainExamples(data));
        Assert.Null(task.LongestSequence(data));
        Assert.Equal(data.Tokenizer.VocabSize, task.Outputs(data.Tokenizer.VocabSize, 7));
        Assert.True(task.CarriesState(spec));
        Assert.False(task.CarriesState(spec with { Training = spec.Training with { LmSampling = LmSamplingKinds.Random } }));

        // The batches the previous code built for a language model.
        var expected = new LanguageModelBatches(data.TrainTokens, spec.Training.BatchSize, spec.Training.SeqLen, spec.Training.LmSampling, spec.Training.Seed);
        var source = task.TrainBatches(spec, data);
        Assert.Equal(expected.StepsPerEpoch, source.StepsPerEpoch);
        for (long k = 0; k < source.StepsPerEpoch; k++)
        {
            var p = new StepPosition(0, k);
            var (a, b) = (source.GetRows(p, 0, source.RowsAt(p))!, expected.GetRows(p, 0, expected.RowsAt(p))!);
            Assert.Equal(b.Inputs, a.Inputs);
            Assert.Equal(b.Targets, a.Targets);
            Assert.Null(a.Lengths);
        }

        // A validation split of fewer than 2 tokens is refused, naming the file.
        var shortValidation = new LoadedDataset(LmData().Train, [new TextRecord("t", null, "v.txt", 1)], DataReport.Empty);
        var error = Assert.Throws<DataFormatException>(() => task.Prepare(spec, data.Tokenizer, null, shortValidation));
        Assert.Contains("v.txt", error.Message);
    }

    [Fact]
    public void Classification_data_is_one_sequence_and_label_id_per_record_and_needs_two_labels()
    {
        var (spec, data) = Clf();
        var task = TrainingTasks.For(spec);
        var raw = ClfData();
        Assert.Equal(new[] { "ham", "spam" }, data.Labels.Names);
        Assert.Equal(raw.Train.Select(r => data.Labels.IdOf(r.Label!)), data.TrainLabels);
        Assert.Equal(raw.Validation.Select(r => data.Tokenizer.Encode(r.Text)), data.ValidationSequences);
        Assert.Equal(30, task.TrainExamples(data));
        Assert.Equal(data.TrainSequences.Concat(data.ValidationSequences).Max(s => s.Length), task.LongestSequence(data));
        Assert.Equal(2, task.Outputs(500, 2));
        Assert.False(task.CarriesState(spec));

        var expected = new ClassificationBatches(data.TrainSequences, data.TrainLabels, spec.Training.BatchSize, spec.Training.Seed);
        var source = task.TrainBatches(spec, data);
        Assert.Equal(expected.StepsPerEpoch, source.StepsPerEpoch);
        foreach (var epoch in new long[] { 0, 1 })
            for (long k = 0; k < source.StepsPerEpoch; k++)
            {
                var p = new StepPosition(epoch, k);
                var (a, b) = (source.GetRows(p, 0, source.RowsAt(p))!, expected.GetRows(p, 0, expected.RowsAt(p))!);
                Assert.Equal(b.Inputs, a.Inputs);
                Assert.Equal(b.Targets, a.Targets);
                Assert.Equal(b.Lengths, a.Lengths);
            }

        var oneLabel = new LoadedDataset(raw.Train.Select(r => r with { Label = "ham" }).ToArray(), raw.Validation, DataReport.Empty);
        var e = Assert.Throws<DataFormatException>(() => task.Prepare(spec, data.Tokenizer, null, oneLabel));
        Assert.Contains("at least 2 distinct labels", e.Message);
    }

    [Fact]
    public void Language_model_loss_and_carried_state_equal_the_model_s_own_cross_entropy()
    {
        var (spec, data) = Lm();
        using var engine = new TrainingEngine(spec, data.Tokenizer.VocabSize, 0, CPU);
        Assert.Same(TrainingTasks.LanguageModel, engine.TrainingTask);
        var source = engine.TrainingTask.TrainBatches(spec, data);
        var lm = Assert.IsType<RecurrentLanguageModel>(engine.Model);

        // The previous code path: the language model's forward from the carried state, the summed cross entropy over every token.
        RecurrentState? referenceState = null, state = null;
        try
        {
            for (long k = 0; k < 3; k++)
            {
                using var batch = source.Get(new StepPosition(0, k), 0, spec.Training.BatchSize)!;
                double expected;
                using (no_grad())
                using (NewDisposeScope())
                {
                    lm.eval();
                    var (logits, next) = lm.Forward(batch.Inputs, referenceState);
                    expected = nn.functional.cross_entropy(logits.reshape(-1, lm.VocabSize), batch.Targets.reshape(-1), reduction: nn.Reduction.Sum).item<float>();
                    referenceState?.Dispose();
                    referenceState = next.Detach();
                }
                var (loss, predictions) = engine.Evaluate(batch, ref state);
                Assert.Equal(expected, loss);
                Assert.Null(predictions);
                Assert.NotNull(state);
            }
            // ... and the state did carry: from zeros, the third chunk's loss differs.
            using var third = source.Get(new StepPosition(0, 2), 0, spec.Training.BatchSize)!;
            RecurrentState? none = null;
            var fromZeros = engine.Evaluate(third, ref none).LossSum;
            none?.Dispose();
            RecurrentState? again = null;
            using (var first = source.Get(new StepPosition(0, 0), 0, spec.Training.BatchSize)!) engine.Evaluate(first, ref again);
            using (var second = source.Get(new StepPosition(0, 1), 0, spec.Training.BatchSize)!) engine.Evaluate(second, ref again);
            var carried = engine.Evaluate(third, ref again).LossSum;
            again?.Dispose();
            Assert.NotEqual(fromZeros, carried);
        }
        finally
        {
            referenceState?.Dispose();
            state?.Dispose();
        }

        // Training: the summed loss and its count are the same cross entropy (with gradients).
        using var step = source.Get(new StepPosition(0, 0), 0, spec.Training.BatchSize)!;
        double reference;
        using (no_grad())
        using (NewDisposeScope())
        {
            lm.train();
            var (logits, _) = lm.Forward(step.Inputs, null);
            reference = nn.functional.cross_entropy(logits.reshape(-1, lm.VocabSize), step.Targets.reshape(-1), reduction: nn.Reduction.Sum).item<float>();
        }
        var stats = engine.ComputeGradients(step, carryState: false);
        Assert.Equal(reference, stats.LossSum, 4);
        Assert.Equal(step.Count, stats.Count);
        Assert.Equal(spec.Training.BatchSize * spec.Training.SeqLen, stats.Count);
    }

    [Fact]
    public void Classification_loss_and_predictions_equal_the_classifier_s_own_cross_entropy_and_argmax()
    {
        var (spec, data) = Clf();
        using var engine = new TrainingEngine(spec, data.Tokenizer.VocabSize, data.Labels.Count, CPU);
        Assert.Same(TrainingTasks.Classification, engine.TrainingTask);
        var clf = Assert.IsType<RecurrentClassifier>(engine.Model);
        var source = engine.TrainingTask.TrainBatches(spec, data);
        var p = new StepPosition(0, 1);
        using var batch = source.Get(p, 0, source.RowsAt(p))!;
        double expected;
        long[] expectedPredictions;
        using (no_grad())
        using (NewDisposeScope())
        {
            clf.eval();
            var output = clf.Forward(batch.Inputs, batch.Lengths!);
            expected = nn.functional.cross_entropy(output, batch.Targets, reduction: nn.Reduction.Sum).item<float>();
            expectedPredictions = output.argmax(1).data<long>().ToArray();
        }
        RecurrentState? none = null;
        var (loss, predictions) = engine.Evaluate(batch, ref none);
        Assert.Null(none);
        Assert.Equal(expected, loss);
        Assert.Equal(expectedPredictions, predictions);
        var stats = engine.ComputeGradients(batch, carryState: true);
        Assert.Equal(batch.Rows, stats.Count);
    }

    [Fact]
    public void Evaluation_gives_the_previous_evaluators_numbers_and_the_task_s_derived_metrics()
    {
        var (lmSpec, lmData) = Lm();
        using (var engine = new TrainingEngine(lmSpec, lmData.Tokenizer.VocabSize, 0, CPU))
        {
            var task = engine.TrainingTask;
            var m = task.Evaluate(engine, lmData, 3, 0);
            var expected = Evaluator.LanguageModel(engine, lmData.ValidationTokens, 3, lmSpec.Training.SeqLen, 0);
            Assert.Equal(expected, m);
            Assert.Equal(Math.Exp(m.Loss), m.Perplexity!.Value, 9);
            // A cluster's evaluation reports only the loss; the task adds what follows from it.
            Assert.Equal(m, task.WithDerivedMetrics(new EvalMetrics(m.Loss, m.Count)));
            // Records given to evaluate on (eval --data): the same numbers as the validation split they hold.
            var records = new[] { new TextRecord(TestJobs.Text(2), null, "v.txt", 1) };
            Assert.Equal(m, task.Evaluate(engine, task.PrepareEvaluation(lmData.Tokenizer, LabelSet.Empty, records), 3, 0));
        }

        var (spec, data) = Clf();
        using var clfEngine = new TrainingEngine(spec, data.Tokenizer.VocabSize, data.Labels.Count, CPU);
        var clfTask = clfEngine.TrainingTask;
        var metrics = clfTask.Evaluate(clfEngine, data, 4, 0);
        // The reference: every validation example alone through the classifier (no padding), averaged.
        var clf = (RecurrentClassifier)clfEngine.Model;
        clf.eval();
        double lossSum = 0;
        var correct = 0;
        using (no_grad())
        {
            for (var i = 0; i < data.ValidationSequences.Count; i++)
            {
                using var scope = NewDisposeScope();
                var seq = data.ValidationSequences[i];
                var output = clf.Forward(tensor(seq.Select(t => (long)t).ToArray(), [1, seq.Length]), tensor(new long[] { seq.Length }));
                lossSum += nn.functional.cross_entropy(output, tensor(new long[] { data.ValidationLabels[i] }), reduction: nn.Reduction.Sum).item<float>();
                if (output.argmax(1).item<long>() == data.ValidationLabels[i]) correct++;
            }
        }
        Assert.Equal(11, metrics.Count);
        Assert.Equal(lossSum / 11, metrics.Loss, 4);
        Assert.Equal((double)correct / 11, metrics.Accuracy);
        Assert.Null(metrics.Perplexity);
        Assert.Same(metrics, clfTask.WithDerivedMetrics(metrics));
        var raw = ClfData();
        Assert.Equal(metrics, clfTask.Evaluate(clfEngine, clfTask.PrepareEvaluation(data.Tokenizer, data.Labels, raw.Validation), 4, 0));
    }

    [Fact]
    public void Memory_pieces_and_spec_rules_follow_the_task()
    {
        var lm = TestJobs.CharLm("t.txt");
        var clf = TestJobs.Classifier("d.jsonl");
        Assert.Equal(lm.Training.SeqLen, TrainingTasks.For(lm).ActivationLength(lm));
        Assert.Equal(clf.Data.MaxLength, TrainingTasks.For(clf).ActivationLength(clf));
        Assert.Equal(64, TrainingTasks.For(lm).LogitsPerRow(64));
        Assert.Equal(1, TrainingTasks.For(clf).LogitsPerRow(64));
        Assert.Equal($"training.seq_len {lm.Training.SeqLen}", TrainingTasks.For(lm).DescribeLength(lm, 80));
        Assert.Equal("sequences of up to 80 tokens", TrainingTasks.For(clf).DescribeLength(clf, 80));
        Assert.Equal($"data.max_length {clf.Data.MaxLength}", TrainingTasks.For(clf).DescribeLength(clf, null));
        Assert.True(TrainingTasks.LanguageModel.Reads(DataFormats.Text));
        Assert.False(TrainingTasks.Classification.Reads(DataFormats.Text));
        Assert.True(TrainingTasks.Classification.Reads(DataFormats.Csv));
        Assert.Equal(2, TrainingTasks.Classification.MinimumLabels);
        Assert.Equal(0, TrainingTasks.LanguageModel.MinimumLabels);
        // Only a language model signals its layers' gradients, so only it can overlap the all-reduce with backward.
        Assert.True(OverlapKinds.Possible(lm with { Model = lm.Model with { Layers = 2 } }));
        Assert.False(OverlapKinds.Possible(clf with { Model = clf.Model with { Layers = 2 } }));
    }

    [Fact]
    public void A_step_plan_runs_max_steps_or_whole_epochs_and_evaluates_and_checkpoints_at_the_intervals_and_the_end()
    {
        var (spec, data) = Clf();
        var source = TrainingTasks.For(spec).TrainBatches(spec, data);
        Assert.Equal(4, source.StepsPerEpoch); // 30 examples, batches of 8
        var byEpochs = StepPlan.For(spec with { Training = spec.Training with { MaxSteps = 0, Epochs = 3, EvalInterval = 5, CheckpointInterval = 4 } }, source);
        Assert.Equal(12, byEpochs.TotalSteps);
        Assert.Equal(new StepPosition(1, 2), byEpochs.PositionOf(6));
        Assert.Equal(new[] { 5, 10, 12 }, Enumerable.Range(1, 12).Where(d => byEpochs.EvaluatesAfter(d)));
        Assert.Equal(new[] { 4, 8, 12 }, Enumerable.Range(1, 12).Where(d => byEpochs.CheckpointsAfter(d)));
        var capped = StepPlan.For(spec with { Training = spec.Training with { MaxSteps = 7, EvalInterval = 0, CheckpointInterval = 0 } }, source);
        Assert.Equal(7, capped.TotalSteps);
        Assert.Equal(new[] { 7 }, Enumerable.Range(1, 7).Where(d => capped.EvaluatesAfter(d) || capped.CheckpointsAfter(d)));
        Assert.Equal(new LearningRateSchedule(spec.Schedule, spec.Optimizer.Lr, 7).At(3), capped.Schedule.At(3));
    }

    [Fact]
    public void Rows_from_a_shard_are_checked_for_the_task_before_they_become_tensors()
    {
        var (lmSpec, lmData) = Lm();
        var lm = TrainingTasks.For(lmSpec);
        var rows = lm.TrainBatches(lmSpec, lmData).GetRows(new StepPosition(0, 0), 0, 2)!;
        var vocab = lmData.Tokenizer.VocabSize;
        lm.CheckRows(rows, vocab, 0, "step 1");
        Assert.Contains("step 1 target id", Assert.Throws<ArgumentException>(() => lm.CheckRows(rows with { Targets = [.. rows.Targets[..^1], vocab] }, vocab, 0, "step 1")).Message);
        Assert.Contains("step 1: 3 targets for 2 rows", Assert.Throws<ArgumentException>(() => lm.CheckRows(rows with { Targets = [1, 2, 3] }, vocab, 0, "step 1")).Message);
        Assert.Contains("inputs do not fill", Assert.Throws<ArgumentException>(() => lm.CheckRows(rows with { Width = rows.Width + 1 }, vocab, 0, "step 1")).Message);

        var (spec, data) = Clf();
        var clf = TrainingTasks.For(spec);
        var p = new StepPosition(0, 0);
        var batch = clf.TrainBatches(spec, data).GetRows(p, 0, 8)!;
        clf.CheckRows(batch, data.Tokenizer.VocabSize, 2, "step 1");
        Assert.Contains("step 1: label id 2 outside [0, 2)", Assert.Throws<ArgumentException>(() => clf.CheckRows(batch with { Targets = [.. batch.Targets[..^1], 2] }, data.Tokenizer.VocabSize, 2, "step 1")).Message);
        Assert.Contains("step 1: length 0 outside", Assert.Throws<ArgumentException>(() => clf.CheckRows(batch with { Lengths = [.. batch.Lengths![..^1], 0] }, data.Tokenizer.VocabSize, 2, "step 1")).Message);
        Assert.Contains("step 1 input id", Assert.Throws<ArgumentException>(() => clf.CheckRows(batch, 3, 2, "step 1")).Message);
        // A language model's rows (targets per token, no lengths) are not a classifier's.
        Assert.Throws<ArgumentException>(() => clf.CheckRows(rows, vocab, 2, "step 1"));
    }
}
