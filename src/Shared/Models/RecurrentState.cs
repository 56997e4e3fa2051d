using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>The hidden state of a recurrent stack: h (layers*dirs, B, H) and, for LSTM, the cell state c.</summary>
public sealed class RecurrentState(Tensor h, Tensor? c) : IDisposable
{
    public Tensor H { get; } = h;
    public Tensor? C { get; } = c;

    /// <summary>Cuts the autograd history (truncated BPTT) and keeps the values alive beyond the current dispose scope.</summary>
    public RecurrentState Detach()
    {
        var d = new RecurrentState(H.detach(), C?.detach());
        d.H.DetachFromDisposeScope();
        d.C?.DetachFromDisposeScope();
        return d;
    }

    public void Dispose()
    {
        H.Dispose();
        C?.Dispose();
    }
}
