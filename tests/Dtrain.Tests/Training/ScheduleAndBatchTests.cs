using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Tests.Training;

public class ScheduleAndBatchTests
{
    [Fact]
    public void Warmup_then_cosine_decays_to_min_lr()
    {
        var s = new LearningRateSchedule(new ScheduleSpec { Kind = ScheduleKinds.Cosine, WarmupSteps = 10, MinLr = 0.1 }, 1.0, 110);
        Assert.Equal(0.1, s.At(0), 6);
        Assert.Equal(1.0, s.At(9), 6);
        Assert.Equal(1.0, s.At(10), 6);
        Assert.Equal(0.55, s.At(60), 6);
        Assert.Equal(0.1, s.At(110), 6);
        Assert.True(s.At(30) > s.At(40));
    }

    [Fact]
    public void Step_schedule_multiplies_by_gamma_every_step_size()
    {
        var s = new LearningRateSchedule(new ScheduleSpec { Kind = ScheduleKinds.Step, StepSize = 100, Gamma = 0.5 }, 0.8, 1000);
        Assert.Equal(0.8, s.At(99), 9);
        Assert.Equal(0.4, s.At(100), 9);
        Assert.Equal(0.2, s.At(250), 9);
    }

    [Fact]
    public void Every_example_is_used_exactly_once_per_epoch_and_order_changes_between_epochs()
    {
        var n = 53;
        var seqs = Enumerable.Range(0, n).Select(i => new[] { i + 2 }).ToArray();
        var labels = Enumerable.Range(0, n).ToArray();
        var source = new ClassificationBatches(seqs, labels, 8, seed: 11);
        Assert.Equal(7, source.StepsPerEpoch);
        List<long> Epoch(long e)
        {
            var seen = new List<long>();
            for (long k = 0; k < source.StepsPerEpoch; k++)
            {
                var pos = new StepPosition(e, k);
                using var b = source.Get(pos, 0, source.RowsAt(pos))!;
                seen.AddRange(b.Targets.data<long>().ToArray());
            }
            return seen;
        }
        var e0 = Epoch(0);
        var e1 = Epoch(1);
        Assert.Equal(Enumerable.Range(0, n).Select(i => (long)i), e0.Order());
        Assert.Equal(Enumerable.Range(0, n).Select(i => (long)i), e1.Order());
        Assert.NotEqual(e0, e1);
        Assert.Equal(e0, Epoch(0));
    }

    [Theory]
    [InlineData(LmSamplingKinds.Stream)]
    [InlineData(LmSamplingKinds.Random)]
    public void Row_slices_of_a_language_model_batch_concatenate_to_the_full_batch(string sampling)
    {
        var tokens = Enumerable.Range(0, 1000).Select(i => 2 + i % 37).ToArray();
        var source = new LanguageModelBatches(tokens, 6, 10, sampling, seed: 4);
        var pos = new StepPosition(1, 3);
        using var full = source.Get(pos, 0, 6)!;
        using var a = source.Get(pos, 0, 2)!;
        using var b = source.Get(pos, 2, 4)!;
        using var joined = TorchSharp.torch.cat([a.Inputs, b.Inputs], 0);
        Assert.True(full.Inputs.eq(joined).all().item<bool>());
        Assert.Equal(full.Count, a.Count + b.Count);
        // Targets are the inputs shifted by one token.
        Assert.Equal(full.Inputs[0, 1].item<long>(), full.Targets[0, 0].item<long>());
    }

    [Fact]
    public void Stream_batches_continue_each_stream_across_steps()
    {
        var tokens = Enumerable.Range(0, 401).ToArray();
        var source = new LanguageModelBatches(tokens, 4, 10, LmSamplingKinds.Stream, seed: 0);
        using var s0 = source.Get(new StepPosition(0, 0), 0, 4)!;
        using var s1 = source.Get(new StepPosition(0, 1), 0, 4)!;
        Assert.Equal(s0.Inputs[2, 9].item<long>() + 1, s1.Inputs[2, 0].item<long>());
        Assert.Equal(100, source.StepsPerEpoch * 10);
    }

    [Fact]
    public void Accuracy_and_macro_f1_match_hand_computed_values()
    {
        var (acc, f1) = ClassificationMetrics.Compute([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 2);
        Assert.Equal(0.6, acc, 9);
        // class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 1 -> 0.6667
        Assert.Equal((0.5 + 2.0 / 3) / 2, f1, 9);
    }
}
