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

    public RecurrentLanguageModel(ModelSpec spec, int vocabSize) : base("language_model")
    {
        VocabSize = vocabSize;
        embedding = nn.Embedding(vocabSize, spec.EmbeddingDim);
        rnn = new RecurrentStack(spec.Cell, spec.EmbeddingDim, spec.HiddenSize, spec.Layers, spec.Dropout, bidirectional: false, spec.GateBias);
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
            return (head.call(dropped), next);
        }
    }
}
