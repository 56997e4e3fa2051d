using Dtrain.Specs;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>A stacked LSTM, GRU or plain tanh RNN (batch first) with dropout between layers behind one interface.</summary>
public sealed class RecurrentStack : nn.Module
{
    private readonly LSTM? lstm;
    private readonly GRU? gru;
    private readonly RNN? rnn;

    public string Cell { get; }
    public int Layers { get; }
    public int HiddenSize { get; }
    public int Directions { get; }

    public RecurrentStack(string cell, int inputSize, int hiddenSize, int layers, double dropout, bool bidirectional, double memoryGateBias = 1.0)
        : base($"{cell}_stack")
    {
        Cell = cell;
        Layers = layers;
        HiddenSize = hiddenSize;
        Directions = bidirectional ? 2 : 1;
        // PyTorch applies RNN dropout only between layers; asking for it with one layer is a no-op that warns.
        var between = layers > 1 ? dropout : 0.0;
        switch (cell)
        {
            case CellKinds.Lstm:
                lstm = nn.LSTM(inputSize, hiddenSize, layers, batchFirst: true, dropout: between, bidirectional: bidirectional);
                InitGateBias(lstm, hiddenSize, gate: 1, memoryGateBias);
                break;
            case CellKinds.Gru:
                gru = nn.GRU(inputSize, hiddenSize, layers, batchFirst: true, dropout: between, bidirectional: bidirectional);
                InitGateBias(gru, hiddenSize, gate: 1, memoryGateBias);
                break;
            case CellKinds.Rnn: rnn = nn.RNN(inputSize, hiddenSize, layers, nn.NonLinearities.Tanh, batchFirst: true, dropout: between, bidirectional: bidirectional); break;
            default: throw new ArgumentException($"unknown cell \"{cell}\"; allowed: {string.Join(", ", CellKinds.All)}", nameof(cell));
        }
        RegisterComponents();
    }

    /// <summary>(B,T,E) -> (B,T,H*dirs), carrying <paramref name="state"/> in and the final state out.</summary>
    public (Tensor Output, RecurrentState State) Run(Tensor input, RecurrentState? state)
    {
        if (lstm is not null)
        {
            var (y, h, c) = lstm.call(input, state is null ? null : (state.H, state.C!));
            return (y, new RecurrentState(h, c));
        }
        var (o, hn) = gru is not null ? gru.call(input, state?.H) : rnn!.call(input, state?.H ?? ZeroState(input));
        return (o, new RecurrentState(hn, null));
    }

    /// <summary>Runs a packed batch of variable-length sequences: the packed outputs of the last layer and the final hidden state (layers*dirs, B, H).</summary>
    public (nn.utils.rnn.PackedSequence Output, Tensor Hidden) RunPacked(nn.utils.rnn.PackedSequence packed)
    {
        if (lstm is not null)
        {
            var (o, h, c) = lstm.call(packed);
            c.Dispose();
            return (o, h);
        }
        return gru is not null ? gru.call(packed) : rnn!.call(packed);
    }

    /// <summary>Runs a packed batch of variable-length sequences and returns the final hidden state (layers*dirs, B, H).</summary>
    public Tensor FinalHidden(nn.utils.rnn.PackedSequence packed)
    {
        if (lstm is not null) return lstm.call(packed).Item2;
        return gru is not null ? gru.call(packed).Item2 : rnn!.call(packed).Item2;
    }

    /// <summary>
    /// Initial bias of the gate that keeps memory: the LSTM forget gate (gate 1 of input, forget, cell, output) or
    /// the GRU update gate (gate 1 of reset, update, new). PyTorch starts it near 0, so memory decays as 0.5^t and
    /// long-range signals never reach the gradient; 1 is the usual LSTM choice (Gers et al. 2000, Jozefowicz et al.
    /// 2015), larger values (about ln of the dependency length, "chrono" initialisation) suit longer ranges.
    /// Only the input-side bias is set; the hidden-side bias of that gate starts at 0.
    /// </summary>
    private static void InitGateBias(nn.Module rnn, int hiddenSize, int gate, double bias)
    {
        using var _ = no_grad();
        var slice = (gate * hiddenSize)..((gate + 1) * hiddenSize);
        foreach (var (name, p) in rnn.named_parameters())
        {
            if (name.StartsWith("bias_ih", StringComparison.Ordinal)) p[slice].fill_(bias);
            else if (name.StartsWith("bias_hh", StringComparison.Ordinal)) p[slice].fill_(0.0);
        }
    }

    private Tensor ZeroState(Tensor input) =>
        zeros(Layers * Directions, input.shape[0], HiddenSize, dtype: input.dtype, device: input.device);
}
