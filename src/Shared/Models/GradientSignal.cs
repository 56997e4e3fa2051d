using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>
/// An identity in the autograd graph that reports when the gradient reaches it: placed on a layer's input, its
/// backward runs once that layer's backward has produced the gradient of its input — and, since libtorch runs
/// gradient accumulation into parameters as soon as it is ready, once the gradients of that layer's parameters (and of
/// everything after it) are final. Data-parallel replicas start all-reducing those gradients while earlier layers are
/// still in backward (<see cref="Distributed.DataParallelReplica"/>).
/// </summary>
public sealed class GradientSignal : autograd.SingleTensorFunction<GradientSignal>
{
    private const string Callback = "callback", Point = "point";

    public override string Name => nameof(GradientSignal);

    /// <summary>
    /// <paramref name="x"/> unchanged; <paramref name="ready"/>(<paramref name="point"/>) is called during backward when
    /// the gradient flows back through it. Without a callback (or without autograd) nothing is inserted.
    /// </summary>
    public static Tensor Mark(Tensor x, Action<int>? ready, int point) =>
        ready is null || !x.requires_grad ? x : apply(x, ready, point);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        ctx.save_data(Callback, vars[1]);
        ctx.save_data(Point, vars[2]);
        // A new tensor (not the input itself), so the graph gets a node of its own.
        return ((Tensor)vars[0]).clone();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        ((Action<int>)ctx.get_data(Callback))((int)ctx.get_data(Point));
        // One entry per argument of apply: the tensor's gradient passes through, the two non-tensors get none.
        return [grad_output, null!, null!];
    }
}
