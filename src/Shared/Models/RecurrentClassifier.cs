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

    /// <summary>Whether the last <see cref="Forward"/> packed its rows (with gradients, or where the unpacked pass does not apply).</summary>
    internal bool LastPassPacked { get; private set; }

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
        LastPassPacked = false;
        var last = is_grad_enabled() ? null : Unpacked(emb, lengths);
        if (last is null)
        {
            LastPassPacked = true;
            using var packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, batch_first: true, enforce_sorted: false);
            last = Summary(rnn.FinalHidden(packed));
        }
        return head.call(dropout.call(last)).MoveToOuterDisposeScope();
    }

    /// <summary>hn (layers*dirs, B, H) -> (B, H*dirs): the last layer's forward (and backward) direction summarise the sequence.</summary>
    private Tensor Summary(Tensor hn) => rnn.Directions == 1 ? hn[-1] : cat([hn[-2], hn[-1]], dim: 1);

    /// <summary>
    /// Inference (no gradients) without packing, where that reads every text exactly as the packed pass does: when all
    /// rows have the whole length (one text, or texts of equal length) the final state is the same; a one-directional
    /// stack's summary is then also its last layer's output at each row's last position (padding only follows it). The
    /// unpacked pass is one fused kernel per layer on the CPU (oneDNN for LSTM) with the input products of all time steps
    /// in one matrix product, against one cell call per time step for a packed sequence — several times faster for one
    /// text. Mixed lengths in a bidirectional stack run each direction as a fused pass too (<see cref="RecurrentStack.BidirectionalSummary"/>:
    /// the backward direction over each row's reversed prefix). Null when it does not apply (dropout between layers in
    /// training mode): the caller packs.
    /// </summary>
    private Tensor? Unpacked(Tensor emb, Tensor lengths)
    {
        var time = emb.shape[1];
        var whole = true;
        foreach (var n in lengths.data<long>())
            if (n != time)
            {
                whole = false;
                break;
            }
        if (whole) return Summary(rnn.Run(emb, null).State.H);
        if (rnn.Directions != 1) return rnn.RunsBidirectionalUnpacked ? rnn.BidirectionalSummary(emb, lengths) : null;
        var output = rnn.Run(emb, null).Output;
        var at = (lengths - 1).to(output.device).view(-1, 1, 1).expand(-1, 1, output.shape[2]);
        return output.gather(1, at).squeeze(1);
    }
}
