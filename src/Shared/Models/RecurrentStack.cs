using Dtrain.Specs;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>
/// A stacked LSTM, GRU or plain tanh RNN (batch first) with dropout between layers behind one interface. Normally one
/// fused module; with <c>perLayer</c> one single-layer module per layer instead (same parameter names, order and
/// initial values, same results), so that a <see cref="GradientSignal"/> can sit between layers.
/// </summary>
public sealed class RecurrentStack : nn.Module
{
    private readonly LSTM? lstm;
    private readonly GRU? gru;
    private readonly RNN? rnn;
    /// <summary>Per-layer mode: the single-layer modules, in order (their parameters are registered under the fused names).</summary>
    private readonly nn.Module[]? layerModules;
    private readonly double between;
    private readonly int inputSize;
    /// <summary>
    /// Inference of a fused bidirectional stack over rows of different lengths: one single-layer one-directional module
    /// per layer and direction (layer k's forward at 2k, backward at 2k + 1), made on first use and loaded with the fused
    /// module's weights at every call; not registered (the model's parameters stay the fused ones).
    /// </summary>
    private nn.Module[]? directionModules;

    /// <summary>
    /// Per-layer mode only: called during backward with layer k once the gradients of layers k.. are final (see
    /// <see cref="GradientSignal"/>); null = no signals.
    /// </summary>
    public Action<int>? GradientsReady { get; set; }

    /// <summary>True when each layer is a module of its own (signals between layers are possible).</summary>
    public bool PerLayer => layerModules is not null;

    public string Cell { get; }
    public int Layers { get; }
    public int HiddenSize { get; }
    public int Directions { get; }

    public RecurrentStack(string cell, int inputSize, int hiddenSize, int layers, double dropout, bool bidirectional, double memoryGateBias = 1.0, bool perLayer = false)
        : base($"{cell}_stack")
    {
        Cell = cell;
        Layers = layers;
        HiddenSize = hiddenSize;
        Directions = bidirectional ? 2 : 1;
        this.inputSize = inputSize;
        // PyTorch applies RNN dropout only between layers; asking for it with one layer is a no-op that warns.
        between = layers > 1 ? dropout : 0.0;
        if (perLayer && !bidirectional && layers > 1)
        {
            if (!CellKinds.All.Contains(cell)) throw new ArgumentException($"unknown cell \"{cell}\"; allowed: {string.Join(", ", CellKinds.All)}", nameof(cell));
            // Built in layer order, each drawing its initial weights as the fused module draws that layer's.
            layerModules = new nn.Module[layers];
            for (var k = 0; k < layers; k++)
            {
                var input = k == 0 ? inputSize : hiddenSize;
                layerModules[k] = cell switch
                {
                    CellKinds.Lstm => nn.LSTM(input, hiddenSize, 1, batchFirst: true),
                    CellKinds.Gru => nn.GRU(input, hiddenSize, 1, batchFirst: true),
                    _ => nn.RNN(input, hiddenSize, 1, nn.NonLinearities.Tanh, batchFirst: true),
                };
                if (cell != CellKinds.Rnn) InitGateBias(layerModules[k], hiddenSize, gate: 1, memoryGateBias);
            }
            RegisterComponents();
            // The fused module's name ("lstm", "gru", "rnn") and parameter names (weight_ih_l{k}, ...): checkpoints,
            // optimizer state and pipeline stages see the same model either way.
            register_module(cell, new LayerParameters(layerModules));
            return;
        }
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
        if (layerModules is not null) return RunPerLayer(input, state);
        if (lstm is not null)
        {
            var (y, h, c) = lstm.call(input, state is null ? null : (state.H, state.C!));
            return (y, new RecurrentState(h, c));
        }
        var (o, hn) = gru is not null ? gru.call(input, state?.H) : rnn!.call(input, state?.H ?? ZeroState(input));
        return (o, new RecurrentState(hn, null));
    }

    /// <summary>Layer by layer, as the fused module computes it: dropout on every layer's input but the first (training only).</summary>
    private (Tensor Output, RecurrentState State) RunPerLayer(Tensor input, RecurrentState? state)
    {
        var hs = new List<Tensor>(Layers);
        var cs = new List<Tensor>(Layers);
        var x = input;
        var owned = false;
        for (var k = 0; k < Layers; k++)
        {
            if (k > 0 && between > 0 && training) Replace(nn.functional.dropout(x, between, training: true));
            // Backward reaches this point once layer k's gradients are final.
            var marked = GradientSignal.Mark(x, GradientsReady, k);
            if (!ReferenceEquals(marked, x)) Replace(marked);
            using var h0 = state?.H.narrow(0, k, 1);
            Tensor y;
            switch (layerModules![k])
            {
                case LSTM l:
                {
                    using var c0 = state?.C?.narrow(0, k, 1);
                    var (o, h, c) = l.call(x, h0 is null || c0 is null ? null : (h0, c0));
                    y = o;
                    hs.Add(h);
                    cs.Add(c);
                    break;
                }
                case GRU g:
                {
                    var (o, h) = g.call(x, h0);
                    y = o;
                    hs.Add(h);
                    break;
                }
                default:
                {
                    var (o, h) = ((RNN)layerModules[k]).call(x, h0 ?? zeros(1, x.shape[0], HiddenSize, dtype: x.dtype, device: x.device));
                    y = o;
                    hs.Add(h);
                    break;
                }
            }
            Replace(y);
        }
        void Replace(Tensor next)
        {
            if (owned) x.Dispose();
            x = next;
            owned = true;
        }
        var hn = cat(hs, 0);
        var cn = cs.Count > 0 ? cat(cs, 0) : null;
        foreach (var t in hs) t.Dispose();
        foreach (var t in cs) t.Dispose();
        return (x, new RecurrentState(hn, cn));
    }

    /// <summary>
    /// Whether <see cref="BidirectionalSummary"/> reads rows of different lengths exactly as the packed pass: a fused
    /// bidirectional stack, without gradients, and no dropout between layers (one layer, or evaluation mode).
    /// </summary>
    public bool RunsBidirectionalUnpacked => Directions == 2 && layerModules is null && !is_grad_enabled() && (between == 0 || !training);

    /// <summary>
    /// Inference over right-padded rows of different lengths (B,T,E) with <paramref name="lengths"/> (B), without packing:
    /// the last layer's summary (B, 2H) — its forward direction's output at each row's last position and its backward
    /// direction's state after the whole row — as the packed pass's final hidden state gives it. Each layer runs each
    /// direction as one fused one-directional pass: forward over the rows as they are (padding only follows a row), backward
    /// over every row's valid prefix reversed (again padding only follows it), its outputs put back in order for the next
    /// layer. A packed sequence instead runs one cell call per time step.
    /// </summary>
    public Tensor BidirectionalSummary(Tensor input, Tensor lengths)
    {
        if (!RunsBidirectionalUnpacked) throw new InvalidOperationException("BidirectionalSummary needs a fused bidirectional stack, no gradients and no dropout between layers");
        var fused = (nn.Module?)lstm ?? (nn.Module?)gru ?? rnn!;
        var weights = fused.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var device = input.device;
        directionModules ??= new nn.Module[2 * Layers];
        var (rows, time) = (input.shape[0], input.shape[1]);
        var last = lengths.to(device).view(rows, 1) - 1;
        using var positions = arange(time, device: device).view(1, time).expand(rows, time);
        // Row b's position t < length reversed within the row (length - 1 - t); padding stays where it is. Its own inverse.
        var reversed = where(positions <= last, last - positions, positions);
        var x = input;
        Tensor? summary = null;
        for (var k = 0; k < Layers; k++)
        {
            var forward = Direction(k, 0, weights).call(x);
            var backwardReversed = Direction(k, 1, weights).call(x.gather(1, reversed.unsqueeze(2).expand(rows, time, x.shape[2])));
            if (k == Layers - 1)
            {
                var at = last.unsqueeze(2).expand(rows, 1, HiddenSize);
                summary = cat([forward.gather(1, at).squeeze(1), backwardReversed.gather(1, at).squeeze(1)], 1);
            }
            else
            {
                x = cat([forward, backwardReversed.gather(1, reversed.unsqueeze(2).expand(rows, time, HiddenSize))], 2);
            }
        }
        return summary!;
    }

    /// <summary>Layer <paramref name="k"/>'s direction <paramref name="d"/> (1: backward) as a one-directional module holding the fused module's current weights.</summary>
    private DirectionPass Direction(int k, int d, Dictionary<string, Parameter> weights)
    {
        var slot = 2 * k + d;
        var input = k == 0 ? inputSize : 2 * HiddenSize;
        var weight = weights[$"weight_ih_l{k}"];
        var module = directionModules![slot] ??= Cell switch
        {
            CellKinds.Lstm => nn.LSTM(input, HiddenSize, 1, batchFirst: true),
            CellKinds.Gru => nn.GRU(input, HiddenSize, 1, batchFirst: true),
            _ => nn.RNN(input, HiddenSize, 1, nn.NonLinearities.Tanh, batchFirst: true),
        };
        module.to(weight.device);
        module.to(weight.dtype);
        var suffix = d == 1 ? "_reverse" : "";
        using (no_grad())
            foreach (var (name, p) in module.named_parameters())
                p.copy_(weights[name.Replace("_l0", $"_l{k}", StringComparison.Ordinal) + suffix]);
        return new DirectionPass(module, HiddenSize);
    }

    /// <summary>One direction's pass over (B,T,I) from a zero state: its outputs (B,T,H).</summary>
    private readonly struct DirectionPass(nn.Module module, int hidden)
    {
        public Tensor call(Tensor x) => module switch
        {
            LSTM l => l.call(x, null).Item1,
            GRU g => g.call(x, null).Item1,
            _ => ((RNN)module).call(x, zeros(1, x.shape[0], hidden, dtype: x.dtype, device: x.device)).Item1,
        };
    }

    /// <summary>Runs a packed batch of variable-length sequences: the packed outputs of the last layer and the final hidden state (layers*dirs, B, H).</summary>
    public (nn.utils.rnn.PackedSequence Output, Tensor Hidden) RunPacked(nn.utils.rnn.PackedSequence packed)
    {
        if (layerModules is not null) throw new NotSupportedException("packed sequences run on the fused stack (per-layer stacks are built for language models only)");
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
        if (layerModules is not null) throw new NotSupportedException("packed sequences run on the fused stack (per-layer stacks are built for language models only)");
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
        // Explicit Scalars and a view disposed after the call: with no dispose scope here, an implicit Scalar (fill_(bias))
        // or the view p[slice] is garbage while libtorch still uses it, and a collection triggered by another thread may
        // free it mid-call ("Expected false to be true ... toFloat" from fill_ was seen that way).
        using var memory = bias.ToScalar();
        using var zero = 0.0.ToScalar();
        foreach (var (name, p) in rnn.named_parameters())
        {
            var value = name.StartsWith("bias_ih", StringComparison.Ordinal) ? memory : name.StartsWith("bias_hh", StringComparison.Ordinal) ? zero : null;
            if (value is null) continue;
            using var part = p[slice];
            part.fill_(value);
        }
    }

    /// <summary>The single-layer modules are not children (their parameters are registered by name instead): dispose them here.</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing && layerModules is not null)
            foreach (var m in layerModules) m.Dispose();
        if (disposing && directionModules is not null)
            foreach (var m in directionModules) m?.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>
    /// Registers the parameters of single-layer modules under the names a fused stack gives them (weight_ih_l{k}, ...)
    /// without registering the modules themselves, so each parameter appears once, in the fused order.
    /// </summary>
    private sealed class LayerParameters : nn.Module
    {
        public LayerParameters(nn.Module[] layers) : base("layers")
        {
            for (var k = 0; k < layers.Length; k++)
                foreach (var (name, p) in layers[k].named_parameters())
                {
                    if (!name.EndsWith("_l0", StringComparison.Ordinal)) throw new InvalidOperationException($"unexpected single-layer parameter name {name}");
                    register_parameter(string.Concat(name.AsSpan(0, name.Length - 1), k.ToString(System.Globalization.CultureInfo.InvariantCulture)), p);
                }
        }
    }

    private Tensor ZeroState(Tensor input) =>
        zeros(Layers * Directions, input.shape[0], HiddenSize, dtype: input.dtype, device: input.device);
}
