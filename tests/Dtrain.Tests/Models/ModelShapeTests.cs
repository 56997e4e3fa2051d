using Dtrain.Models;
using Dtrain.Specs;
using static TorchSharp.torch;

namespace Dtrain.Tests.Models;

public class ModelShapeTests
{
    static JobSpec Spec(string task, string cell, bool bidirectional = false, int layers = 2) => new()
    {
        Task = task,
        Model = new ModelSpec { Cell = cell, Layers = layers, EmbeddingDim = 8, HiddenSize = 12, Bidirectional = bidirectional, Dropout = 0.1 },
    };

    [Theory]
    [InlineData(CellKinds.Lstm)]
    [InlineData(CellKinds.Gru)]
    [InlineData(CellKinds.Rnn)]
    public void Language_model_maps_B_by_T_tokens_to_B_by_T_by_V_logits_and_carries_state(string cell)
    {
        using var model = (RecurrentLanguageModel)ModelFactory.Create(Spec(TaskKinds.LanguageModel, cell), 20, 0, CPU);
        using var x = randint(0, 20, [3, 7]);
        var (logits, state) = model.Forward(x, null);
        Assert.Equal(new long[] { 3, 7, 20 }, logits.shape);
        Assert.Equal(new long[] { 2, 3, 12 }, state.H.shape);
        Assert.Equal(cell == CellKinds.Lstm, state.C is not null);
        var (logits2, state2) = model.Forward(x, state);
        Assert.Equal(logits.shape, logits2.shape);
        // The carried state changes the output: the model really reads it.
        Assert.False(logits.allclose(logits2));
        logits.Dispose(); logits2.Dispose(); state.Dispose(); state2.Dispose();
    }

    [Theory]
    [InlineData(CellKinds.Lstm, false)]
    [InlineData(CellKinds.Lstm, true)]
    [InlineData(CellKinds.Gru, true)]
    [InlineData(CellKinds.Rnn, false)]
    public void Classifier_maps_padded_batch_to_B_by_C_logits(string cell, bool bidirectional)
    {
        using var model = (RecurrentClassifier)ModelFactory.Create(Spec(TaskKinds.Classification, cell, bidirectional), 20, 4, CPU);
        model.eval();
        using var x = tensor(new long[] { 5, 6, 7, 0, 0, 8, 9, 10, 11, 12 }, [2, 5]);
        using var lengths = tensor(new long[] { 3, 5 });
        using var logits = model.Forward(x, lengths);
        Assert.Equal(new long[] { 2, 4 }, logits.shape);
    }

    [Fact]
    public void Classifier_ignores_padding_beyond_each_length()
    {
        using var model = (RecurrentClassifier)ModelFactory.Create(Spec(TaskKinds.Classification, CellKinds.Lstm, bidirectional: true), 20, 3, CPU);
        model.eval();
        using var shortBatch = tensor(new long[] { 5, 6, 7 }, [1, 3]);
        using var padded = tensor(new long[] { 5, 6, 7, 0, 0, 0 }, [1, 6]);
        using var len = tensor(new long[] { 3 });
        using var a = model.Forward(shortBatch, len);
        using var b = model.Forward(padded, len);
        Assert.True(a.allclose(b, rtol: 1e-5, atol: 1e-6));
    }

    [Theory]
    [InlineData(CellKinds.Lstm, false, 1)]
    [InlineData(CellKinds.Lstm, false, 2)]
    [InlineData(CellKinds.Lstm, true, 1)]
    [InlineData(CellKinds.Lstm, true, 2)]
    [InlineData(CellKinds.Gru, false, 2)]
    [InlineData(CellKinds.Gru, true, 2)]
    [InlineData(CellKinds.Rnn, false, 2)]
    [InlineData(CellKinds.Rnn, true, 1)]
    [InlineData(CellKinds.Rnn, true, 2)]
    [InlineData(CellKinds.Gru, true, 1)]
    [InlineData(CellKinds.Lstm, true, 3)]
    public void Classifier_inference_without_packing_equals_the_packed_pass(string cell, bool bidirectional, int layers)
    {
        // Without gradients the classifier never packs (one fused pass per layer and direction); with gradients it always
        // packs, as in training. Both must read every text alike.
        using var model = (RecurrentClassifier)ModelFactory.Create(Spec(TaskKinds.Classification, cell, bidirectional, layers), 50, 3, CPU);
        model.eval();
        var random = new Random(3);
        foreach (var lens in new[] { new long[] { 9 }, new long[] { 1 }, new long[] { 7, 7, 7 }, new long[] { 9, 1, 4, 9, 6 }, new long[] { 3, 8, 2 } })
        {
            var time = (int)lens.Max();
            var ids = new long[lens.Length * time];
            for (var r = 0; r < lens.Length; r++)
                for (var t = 0; t < lens[r]; t++) ids[r * time + t] = random.Next(1, 50);
            using var x = tensor(ids, [lens.Length, time]);
            using var lengths = tensor(lens);
            using var packed = model.Forward(x, lengths);
            Tensor fast;
            using (no_grad()) fast = model.Forward(x, lengths);
            using var _ = fast;
            // Every case runs unpacked now, mixed lengths in a bidirectional stack included.
            Assert.False(model.LastPassPacked, $"lengths [{string.Join(", ", lens)}]: the pass without gradients packed");
            var gap = (fast - packed.detach()).abs().max().item<float>();
            Assert.True(gap <= 1e-6, $"lengths [{string.Join(", ", lens)}]: logits differ by {gap}");
        }
    }

    [Fact]
    public void Same_seed_gives_identical_initial_weights()
    {
        var spec = Spec(TaskKinds.LanguageModel, CellKinds.Gru);
        using var a = ModelFactory.Create(spec, 30, 0, CPU);
        using var b = ModelFactory.Create(spec, 30, 0, CPU);
        using var c = ModelFactory.Create(spec with { Training = spec.Training with { Seed = 99 } }, 30, 0, CPU);
        var pa = a.parameters().ToList();
        var pb = b.parameters().ToList();
        var pc = c.parameters().ToList();
        for (var i = 0; i < pa.Count; i++) Assert.True(pa[i].eq(pb[i]).all().item<bool>());
        Assert.Contains(pa.Zip(pc), p => !p.First.eq(p.Second).all().item<bool>());
    }

    [Fact]
    public void Device_selection_uses_cuda_where_present_and_falls_back_to_cpu_with_a_message_elsewhere()
    {
        // True on any machine: with CUDA, cuda:0 is the first GPU and no message; without it, CPU and a message saying why.
        var messages = new List<string>();
        var device = Dtrain.Runtime.DeviceSelector.Resolve("cuda:0", messages.Add);
        if (cuda.is_available())
        {
            Assert.Equal((TorchSharp.DeviceType.CUDA, 0), (device.type, (int)device.index));
            Assert.Empty(messages);
        }
        else
        {
            Assert.Equal(TorchSharp.DeviceType.CPU, device.type);
            Assert.Contains("device cuda:0 requested but CUDA is not available", Assert.Single(messages));
        }

        // A device number past the last GPU falls back with a message, whether there are GPUs or none.
        messages.Clear();
        Assert.Equal(TorchSharp.DeviceType.CPU, Dtrain.Runtime.DeviceSelector.Resolve("cuda:99", messages.Add).type);
        Assert.Contains("cuda:99 requested but", Assert.Single(messages));
        Assert.Equal(TorchSharp.DeviceType.CPU, Dtrain.Runtime.DeviceSelector.Resolve("cpu", messages.Add).type);

        // What is not a device is an error naming it, never a silent fallback or a FormatException.
        foreach (var bad in new[] { "cuda:abc", "cuda:", "cuda:-1", "gpu", "CPU" })
            Assert.Contains($"\"{bad}\"", Assert.Throws<ArgumentException>(() => Dtrain.Runtime.DeviceSelector.Resolve(bad)).Message);
    }
}
