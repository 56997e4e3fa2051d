using Dtrain.Models;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using static TorchSharp.torch;

namespace Dtrain.Tests.Models;

/// <summary>
/// A language model built with one module per recurrent layer (for gradient overlap) is the fused model in another
/// shape: same parameter names, order and initial values, bit-identical outputs, states and gradients.
/// </summary>
[Collection(TorchRngCollection.Name)]
public class PerLayerStackTests
{
    static JobSpec Spec(string cell, double dropout) => new()
    {
        Model = new ModelSpec { Cell = cell, Layers = 3, EmbeddingDim = 8, HiddenSize = 12, Dropout = dropout },
        Training = new TrainingSpec { Seed = 11 },
    };

    [Theory]
    [InlineData(CellKinds.Lstm, 0.0)]
    [InlineData(CellKinds.Lstm, 0.3)]
    [InlineData(CellKinds.Gru, 0.3)]
    [InlineData(CellKinds.Rnn, 0.0)]
    public void Per_layer_language_model_matches_the_fused_one_bit_for_bit(string cell, double dropout)
    {
        var spec = Spec(cell, dropout);
        using var fused = (RecurrentLanguageModel)ModelFactory.Create(spec, 20, 0, CPU);
        using var layered = (RecurrentLanguageModel)ModelFactory.Create(spec, 20, 0, CPU, perLayer: true);
        var a = fused.named_parameters().ToList();
        var b = layered.named_parameters().ToList();
        Assert.Equal(a.Select(p => p.name), b.Select(p => p.name));
        for (var i = 0; i < a.Count; i++) Assert.True(a[i].parameter.equal(b[i].parameter).all().item<bool>(), $"initial {a[i].name} differs");

        var signals = new List<int>();
        layered.GradientsReady = signals.Add;
        using var x = randint(0, 20, [4, 9], generator: new TorchSharp.torch.Generator(5));
        var results = new List<(Tensor Logits, RecurrentState State, List<Tensor> Grads)>();
        foreach (var model in new[] { fused, layered })
        {
            model.train();
            model.zero_grad();
            random.manual_seed(3);   // the same dropout draws for both
            var (logits, state) = model.Forward(x, null);
            var (logits2, state2) = model.Forward(x, state.Detach());
            (logits.sum() + logits2.square().sum()).backward();
            results.Add((logits2, state2, [.. model.parameters().Select(p => p.grad!.clone())]));
        }
        Assert.True(results[0].Logits.equal(results[1].Logits).all().item<bool>(), "logits differ");
        Assert.True(results[0].State.H.equal(results[1].State.H).all().item<bool>(), "carried h differs");
        if (cell == CellKinds.Lstm) Assert.True(results[0].State.C!.equal(results[1].State.C!).all().item<bool>(), "carried c differs");
        for (var i = 0; i < a.Count; i++) Assert.True(results[0].Grads[i].equal(results[1].Grads[i]).all().item<bool>(), $"gradient of {a[i].name} differs");
        // Backward passed the head (point 3), then layers 2, 1, 0 — for each of the two forward passes.
        Assert.Equal([3, 2, 1, 0, 3, 2, 1, 0], signals);
    }
}
