using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Training.Optimizers;

// dtrain's own optimizer steps. TorchSharp 0.107's SGD/Adam/AdamW steps pass plain doubles to tensor operations
// (mul_(beta1), add_(grad, 1 - beta1), ...): each becomes a temporary Scalar that nothing references once its native
// handle is read, so the garbage collector may finalize it — freeing the native scalar — while libtorch still reads it.
// A job died that way ("Unknown scalar type" from Tensor.add_ inside Adam.step; upstream dotnet/TorchSharp #1434,
// #1496). These classes take the same steps with the same operations in the same order (so the results are bit for bit
// TorchSharp's), but every number reaches libtorch as an explicit Scalar that stays referenced until the step is done —
// and only through overloads that take every Scalar from the caller (TorchSharp's add_(Scalar) and add_(Tensor) make an
// implicit alpha of 1 themselves, so they are not called here).
//
// They derive from TorchSharp's optimizers and keep their class names on purpose: the parameter groups, the state
// (moments, step counts, momentum buffers) and its serialization are TorchSharp's, and OptimizerHelper.save_state_dict
// writes the class name — "Adam", "AdamW", "SGD" — so checkpoints written by TorchSharp's optimizers load into these
// and the other way round, byte for byte.

/// <summary>Scalars made for one optimizer step, all disposed together after its last native call.</summary>
internal sealed class StepScalars : IDisposable
{
    private readonly List<Scalar> made = [];

    public Scalar Of(double value) => Keep(value.ToScalar());

    public Scalar Of(long value) => Keep(value.ToScalar());

    private Scalar Keep(Scalar s)
    {
        made.Add(s);
        return s;
    }

    public void Dispose()
    {
        foreach (var s in made) s.Dispose();
        made.Clear();
    }

    /// <summary>The loss a step's closure computes (with gradients on), as TorchSharp's optimizers evaluate it; null without one.</summary>
    public static Tensor? Closure(Func<Tensor>? closure)
    {
        if (closure is null) return null;
        using var _ = enable_grad();
        return closure();
    }
}

/// <summary>Adam (L2 weight decay added to the gradient), as TorchSharp 0.107's <see cref="TorchSharp.Modules.Adam"/>, with explicit Scalars.</summary>
public sealed class Adam(IEnumerable<Parameter> parameters, double lr, double beta1, double beta2, double eps, double weightDecay, bool amsgrad = false)
    : TorchSharp.Modules.Adam(parameters, lr, beta1, beta2, eps, weightDecay, amsgrad)
{
    public override Tensor step(Func<Tensor>? closure = null) => AdamStep.Run(closure, _parameter_groups,
        (scalars, options) =>
        {
            var o = (Options)options;
            return new AdamStep(scalars, o.beta1!.Value, o.beta2!.Value, o.eps!.Value, o.weight_decay!.Value, o.amsgrad!.Value, o.maximize!.Value, o.LearningRate!.Value, decoupled: false);
        },
        (step, p) =>
        {
            var state = (State)_state[p.Handle];
            step.Update(p, ref state.step, state.exp_avg, state.exp_avg_sq, ref state.max_exp_avg_sq);
        });
}

/// <summary>AdamW (decoupled weight decay), as TorchSharp 0.107's <see cref="TorchSharp.Modules.AdamW"/>, with explicit Scalars.</summary>
public sealed class AdamW(IEnumerable<Parameter> parameters, double lr, double beta1, double beta2, double eps, double weightDecay, bool amsgrad = false)
    : TorchSharp.Modules.AdamW(parameters, lr, beta1, beta2, eps, weightDecay, amsgrad)
{
    public override Tensor step(Func<Tensor>? closure = null) => AdamStep.Run(closure, _parameter_groups,
        (scalars, options) =>
        {
            var o = (Options)options;
            return new AdamStep(scalars, o.beta1!.Value, o.beta2!.Value, o.eps!.Value, o.weight_decay!.Value, o.amsgrad!.Value, o.maximize!.Value, o.LearningRate!.Value, decoupled: true);
        },
        (step, p) =>
        {
            var state = (State)_state[p.Handle];
            step.Update(p, ref state.step, state.exp_avg, state.exp_avg_sq, ref state.max_exp_avg_sq);
        });
}

/// <summary>SGD with momentum, dampening, Nesterov and L2 weight decay, as TorchSharp 0.107's <see cref="TorchSharp.Modules.SGD"/>, with explicit Scalars.</summary>
public sealed class SGD(IEnumerable<Parameter> parameters, double lr, double momentum = 0, double dampening = 0, double weightDecay = 0, bool nesterov = false)
    : TorchSharp.Modules.SGD(parameters, lr, momentum, dampening, weightDecay, nesterov)
{
    public override Tensor step(Func<Tensor>? closure = null)
    {
        var loss = StepScalars.Closure(closure);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var scalars = new StepScalars();
        foreach (var group in _parameter_groups)
        {
            var o = (Options)group.Options;
            var (momentum, dampening, weightDecay, nesterov, maximize, lr) =
                (o.momentum!.Value, o.dampening!.Value, o.weight_decay!.Value, o.nesterov!.Value, o.maximize!.Value, o.LearningRate!.Value);
            var decay = scalars.Of(weightDecay);
            var keep = scalars.Of(momentum);
            var take = scalars.Of(1.0 - dampening);
            var rate = scalars.Of(maximize ? lr : -lr);
            foreach (var p in group.Parameters)
            {
                var state = (State)_state[p.Handle];
                var grad = p.grad;
                if (grad is null) continue;
                if (weightDecay != 0) grad = grad.add(p, decay);
                if (momentum != 0)
                {
                    var buffer = state.momentum_buffer;
                    if (buffer is null) buffer = grad.clone().detach().DetachFromDisposeScope();
                    else buffer.mul_(keep).add_(grad, take);
                    grad = nesterov ? grad.add(buffer, keep) : buffer;
                    state.momentum_buffer = buffer;
                }
                p.add_(grad, rate);
            }
        }
        return loss!;
    }
}

/// <summary>One Adam or AdamW update of a parameter group: the group's numbers as Scalars made once, the per-step ones per parameter.</summary>
internal readonly struct AdamStep
{
    private readonly StepScalars scalars;
    private readonly double beta1, beta2, weightDecay, lr;
    private readonly bool amsgrad, maximize, decoupled;
    private readonly Scalar b1, keep1, b2, keep2, eps, one, decay;

    public AdamStep(StepScalars scalars, double beta1, double beta2, double eps, double weightDecay, bool amsgrad, bool maximize, double lr, bool decoupled)
    {
        this.scalars = scalars;
        (this.beta1, this.beta2, this.weightDecay, this.lr, this.amsgrad, this.maximize, this.decoupled) = (beta1, beta2, weightDecay, lr, amsgrad, maximize, decoupled);
        b1 = scalars.Of(beta1);
        keep1 = scalars.Of(1.0 - beta1);
        b2 = scalars.Of(beta2);
        keep2 = scalars.Of(1.0 - beta2);
        this.eps = scalars.Of(eps);
        // add_(Scalar) passes alpha 1 as an implicit Scalar of its own: every call here names all its Scalars.
        one = scalars.Of(1L);
        // Adam adds weight_decay × parameter to the gradient; AdamW shrinks the parameter by lr × weight_decay first.
        decay = scalars.Of(decoupled ? 1.0 - lr * weightDecay : weightDecay);
    }

    /// <summary>
    /// Adam's or AdamW's whole step (their own Options and State types are told apart by <paramref name="stepOf"/> and
    /// <paramref name="update"/>): the closure's loss first, then every group's update without gradients, every Scalar
    /// kept until the last native call.
    /// </summary>
    public static Tensor Run(Func<Tensor>? closure, IEnumerable<ParamGroup> groups, Func<StepScalars, OptimizerOptions, AdamStep> stepOf, Action<AdamStep, Parameter> update)
    {
        var loss = StepScalars.Closure(closure);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var scalars = new StepScalars();
        foreach (var group in groups)
        {
            var step = stepOf(scalars, group.Options);
            foreach (var p in group.Parameters) update(step, p);
        }
        return loss!;
    }

    public void Update(Parameter p, ref long step, Tensor expAvg, Tensor expAvgSq, ref Tensor? maxExpAvgSq)
    {
        var grad = p.grad;
        if (grad is null) return;
        if (maximize) grad = -grad;
        step++;
        if (decoupled) p.mul_(decay);
        var correction1 = 1.0 - Math.Pow(beta1, step);
        var correction2 = 1.0 - Math.Pow(beta2, step);
        if (!decoupled && weightDecay != 0) grad = grad.add(p, decay);
        expAvg.mul_(b1).add_(grad, keep1);
        // Adam multiplies by the conjugate (a no-op on real tensors), AdamW by the gradient itself: kept as TorchSharp has them.
        expAvgSq.mul_(b2).addcmul_(grad, decoupled ? grad : grad.conj(), keep2);
        var root = scalars.Of(Math.Sqrt(correction2));
        Tensor denominator;
        if (amsgrad)
        {
            var before = maxExpAvgSq!;
            maxExpAvgSq = maximum(before, expAvgSq).DetachFromDisposeScope();
            before.Dispose();
            denominator = maxExpAvgSq.sqrt().div_(root).add_(eps, one);
        }
        else
        {
            denominator = expAvgSq.sqrt().div_(root).add_(eps, one);
        }
        p.addcdiv_(expAvg, denominator, scalars.Of(-(lr / correction1)));
    }
}
