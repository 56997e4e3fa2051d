using Dtrain.Specs;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>Embedding → stacked RNN → dropout → Linear: next-token logits at every position.</summary>
public sealed class RecurrentLanguageModel : nn.Module
{
    private readonly Embedding embedding;
    private readonly RecurrentStack rnn;
    private readonly Dropout dropout;
    private readonly Linear head;

    public int VocabSize { get; }

    /// <summary>
    /// Called during backward with the index of the first ready part once its gradients are final: the number of
    /// layers when the head's are, k when layers k.. (and the head) are. Needs a per-layer model for the layers.
    /// </summary>
    public Action<int>? GradientsReady
    {
        get => gradientsReady;
        set
        {
            gradientsReady = value;
            rnn.GradientsReady = value;
        }
    }

    private Action<int>? gradientsReady;

    /// <summary>Recurrent layers.</summary>
    public int Layers => rnn.Layers;

    /// <summary><paramref name="perLayer"/>: one module per recurrent layer (see <see cref="RecurrentStack"/>), so gradients can be signalled between layers.</summary>
    public RecurrentLanguageModel(ModelSpec spec, int vocabSize, bool perLayer = false) : base("language_model")
    {
        VocabSize = vocabSize;
        embedding = nn.Embedding(vocabSize, spec.EmbeddingDim);
        rnn = new RecurrentStack(spec.Cell, spec.EmbeddingDim, spec.HiddenSize, spec.Layers, spec.Dropout, bidirectional: false, spec.GateBias, perLayer);
        dropout = nn.Dropout(spec.Dropout);
        head = nn.Linear(spec.HiddenSize, vocabSize);
        RegisterComponents();
    }

    /// <summary>(B,T) token ids -> (B,T,V) logits, and the state after the last position.</summary>
    public (Tensor Logits, RecurrentState State) Forward(Tensor tokens, RecurrentState? state)
    {
        using var emb = embedding.call(tokens);
        var (y, next) = rnn.Run(emb, state);
        using (y)
        {
            using var dropped = dropout.call(y);
            var marked = GradientSignal.Mark(dropped, gradientsReady, rnn.Layers);
            using (ReferenceEquals(marked, dropped) ? null : marked)
                return (head.call(marked), next);
        }
    }
}
