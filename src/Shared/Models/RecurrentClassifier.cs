using Dtrain.Specs;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>Embedding → stacked (optionally bidirectional) RNN → final hidden state → dropout → Linear: one label per sequence.</summary>
public sealed class RecurrentClassifier : nn.Module
{
    private readonly Embedding embedding;
    private readonly RecurrentStack rnn;
    private readonly Dropout dropout;
    private readonly Linear head;

    public int Classes { get; }

    public RecurrentClassifier(ModelSpec spec, int vocabSize, int classes) : base("classifier")
    {
        Classes = classes;
        embedding = nn.Embedding(vocabSize, spec.EmbeddingDim, padding_idx: 0);
        rnn = new RecurrentStack(spec.Cell, spec.EmbeddingDim, spec.HiddenSize, spec.Layers, spec.Dropout, spec.Bidirectional, spec.GateBias);
        dropout = nn.Dropout(spec.Dropout);
        head = nn.Linear(spec.HiddenSize * rnn.Directions, classes);
        RegisterComponents();
    }

    /// <summary>(B,T) padded token ids and (B) lengths (int64, CPU, each in 1..T) -> (B,C) logits.</summary>
    public Tensor Forward(Tensor tokens, Tensor lengths)
    {
        using var scope = NewDisposeScope();
        var emb = embedding.call(tokens);
        using var packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first: true, enforce_sorted: false);
        var hn = rnn.FinalHidden(packed);
        // hn: (layers*dirs, B, H); the last layer's forward (and backward) direction summarise the sequence.
        var last = rnn.Directions == 1
            ? hn[-1]
            : cat([hn[-2], hn[-1]], dim: 1);
        return head.call(dropout.call(last)).MoveToOuterDisposeScope();
    }
}
