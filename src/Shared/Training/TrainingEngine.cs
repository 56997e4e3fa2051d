using Dtrain.Models;
using Dtrain.Specs;
using Dtrain.Training.Tasks;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dtrain.Training;

/// <summary>Loss of one micro-batch, summed (not averaged) so replicas can add their shares.</summary>
public readonly record struct GradientStats(double LossSum, long Count);

/// <summary>
/// What <see cref="TrainingEngine.ApplyGradients"/> did: the gradient norm before clipping, and — when the loss or the
/// gradient was not finite — what, in which case the optimizer step was skipped (<see cref="NonFiniteCauses"/>).
/// </summary>
public readonly record struct AppliedStep(double GradNorm, string? NonFinite)
{
    public bool Skipped => NonFinite is not null;

    /// <summary>"loss NaN" or "gradient norm Infinity", for messages; null for an applied step.</summary>
    public string? Describe(double loss) => NonFinite switch
    {
        null => null,
        NonFiniteCauses.Loss => $"non-finite loss ({NonFiniteSteps.G(loss)})",
        _ => $"non-finite gradient (norm {NonFiniteSteps.G(GradNorm)})",
    };
}

/// <summary>
/// The per-replica training step, split where a data-parallel runtime needs it: <see cref="ComputeGradients"/>
/// accumulates the gradient of the summed loss; after an all-reduce (or nothing, alone),
/// <see cref="ApplyGradients"/> divides by the global count, clips and steps the optimizer.
/// </summary>
public sealed class TrainingEngine : IDisposable
{
    private readonly JobSpec spec;
    private readonly Device device;
    private readonly IReadOnlyList<Parameter> parameters;
    private RecurrentState? carried;
    /// <summary>The carried state before the last step that carried one, until that step is applied (dropped) or skipped (restored).</summary>
    private RecurrentState? beforeStep;
    private bool stepCarried;

    /// <summary>The job this engine trains (model, optimizer and training settings).</summary>
    public JobSpec Spec => spec;

    public nn.Module Model { get; }
    public optim.Optimizer Optimizer { get; }
    /// <summary>The job's task: it built <see cref="Model"/> and runs its forward pass and loss.</summary>
    public ITrainingTask TrainingTask { get; }

    /// <param name="perLayer">A language model with one module per recurrent layer, so that <see cref="GradientsReady"/> can fire between layers (same parameters and results).</param>
    public TrainingEngine(JobSpec spec, int vocabSize, int classes, Device device, bool perLayer = false)
    {
        this.spec = spec;
        this.device = device;
        TrainingTask = TrainingTasks.For(spec);
        Model = ModelFactory.Create(spec, vocabSize, classes, device, perLayer);
        parameters = Model.parameters().ToList();
        Optimizer = OptimizerFactory.Create(spec.Optimizer, parameters);
    }

    public IReadOnlyList<Parameter> Parameters => parameters;

    /// <summary>
    /// Language models only: called during backward, on the thread running it, with the index of the first ready part
    /// once the gradients of that part and of everything after it are final — the number of layers when the head's
    /// are, k when layers k.. are (per-layer models only; a fused stack signals the head alone).
    /// </summary>
    public Action<int>? GradientsReady
    {
        set
        {
            TrainingTask.SetGradientsReady(Model, value);
        }
    }

    /// <summary>The hidden state carried between consecutive chunks (stream language modelling), for checkpoints.</summary>
    public RecurrentState? CarriedState
    {
        get => carried;
        set
        {
            SettleCarriedState(restore: false);
            carried?.Dispose();
            carried = value;
        }
    }

    /// <summary>Forgets the carried hidden state (start of an epoch).</summary>
    public void ResetState() => CarriedState = null;

    /// <summary>Ends a step for the carried state: kept (the step was applied), or back to what it was before the step (skipped).</summary>
    private void SettleCarriedState(bool restore)
    {
        if (!stepCarried) return;
        stepCarried = false;
        if (restore)
        {
            carried?.Dispose();
            carried = beforeStep;
        }
        else beforeStep?.Dispose();
        beforeStep = null;
    }

    /// <summary>Optional: told when <see cref="ComputeGradients"/> enters the forward and the backward pass (a worker's live phase).</summary>
    public Action<string>? PhaseChanged { get; set; }

    /// <summary>
    /// Zeroes the gradients, runs forward and backward on the summed loss, and returns the loss sum and count.
    /// <paramref name="inject"/> (a <see cref="NonFiniteCauses"/> value; tests and drills, see <see cref="NonFiniteInjection"/>)
    /// makes the loss NaN before the backward pass, or one gradient element infinite after it.
    /// </summary>
    /// <param name="lossReady">Called with the summed loss after the forward pass, before backward starts.</param>
    public GradientStats ComputeGradients(Batch batch, bool carryState, string? inject = null, Action<double>? lossReady = null)
    {
        Model.train();
        Optimizer.zero_grad();
        using var scope = NewDisposeScope();
        PhaseChanged?.Invoke(Distributed.ActivityPhases.Forward);
        var loss = SummedLoss(batch, carryState);
        using var nan = double.NaN.ToScalar();
        if (inject == NonFiniteCauses.Loss) loss = loss.mul(nan);
        lossReady?.Invoke(loss.item<float>());
        PhaseChanged?.Invoke(Distributed.ActivityPhases.Backward);
        loss.backward();
        if (inject == NonFiniteCauses.Gradient) PoisonGradient(parameters);
        return new GradientStats(loss.item<float>(), batch.Count);
    }

    /// <summary>Makes the first element of the first gradient infinite (fault injection).</summary>
    public static void PoisonGradient(IEnumerable<Parameter> parameters)
    {
        using var _ = no_grad();
        var p = parameters.First();
        p.grad ??= zeros_like(p);
        var element = p.grad;
        while (element.dim() > 0) element = element[0];
        using var infinity = double.PositiveInfinity.ToScalar();
        element.fill_(infinity);
    }

    /// <summary>
    /// Averages the accumulated gradients over <paramref name="globalCount"/>, clips them and takes one optimizer step at
    /// <paramref name="lr"/>; returns the pre-clip gradient norm. When <paramref name="lossSum"/> (the step's summed loss,
    /// over every replica) or the gradient norm is not finite, the step is skipped instead: the gradients are zeroed and
    /// neither the parameters nor the optimizer's state (moments, step count) change.
    /// </summary>
    public AppliedStep ApplyGradients(long globalCount, double lr, double lossSum = 0)
    {
        using var scope = NewDisposeScope();
        if (globalCount <= 0) throw new ArgumentOutOfRangeException(nameof(globalCount), globalCount, "no samples contributed to this step");
        var scale = 1.0 / globalCount;
        using (no_grad())
        {
            // An explicit Scalar, alive until after the last call: an implicit one (mul_(double)) is a temporary the GC
            // may finalize while libtorch still reads it (a run died once in Scalar::toDouble inside mul_).
            using var factor = scale.ToScalar();
            foreach (var p in parameters) p.grad?.mul_(factor);
        }
        var norm = spec.Training.ClipNorm > 0
            ? nn.utils.clip_grad_norm_(parameters, spec.Training.ClipNorm)
            : GradientNorm();
        var nonFinite = !double.IsFinite(lossSum) ? NonFiniteCauses.Loss : !double.IsFinite(norm) ? NonFiniteCauses.Gradient : null;
        if (nonFinite is not null)
        {
            // Nothing of the step remains: not its gradients, not its update, not the hidden state it carried on
            // (which a non-finite activation may have poisoned); only the position in the data moves on.
            Optimizer.zero_grad();
            SettleCarriedState(restore: true);
            return new AppliedStep(norm, nonFinite);
        }
        SettleCarriedState(restore: false);
        OptimizerFactory.SetLearningRate(Optimizer, lr);
        Optimizer.step();
        return new AppliedStep(norm, null);
    }

    /// <summary>Summed loss of a batch without gradients, and the predicted class per row (classification) for accuracy and F1.</summary>
    public (double LossSum, long[]? Predictions) Evaluate(Batch batch, ref RecurrentState? state)
    {
        Model.eval();
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var forward = TrainingTask.Forward(Model, batch, device, state);
        if (forward.State is { } next)
        {
            state?.Dispose();
            state = next.Detach();
        }
        return (forward.LossSum.item<float>(), TrainingTask.Predictions(forward.Output));
    }

    private Tensor SummedLoss(Batch batch, bool carryState)
    {
        var forward = TrainingTask.Forward(Model, batch, device, carryState ? carried : null);
        if (carryState && forward.State is { } next)
        {
            // The state before this step is kept until the step is applied or skipped.
            SettleCarriedState(restore: false);
            beforeStep = carried;
            stepCarried = true;
            carried = next.Detach();
        }
        return forward.LossSum;
    }

    private double GradientNorm()
    {
        double sum = 0;
        foreach (var p in parameters)
        {
            if (p.grad is null) continue;
            var n = p.grad.norm().item<float>();
            sum += (double)n * n;
        }
        return Math.Sqrt(sum);
    }

    public void Dispose()
    {
        SettleCarriedState(restore: false);
        carried?.Dispose();
        Optimizer.Dispose();
        Model.Dispose();
    }
}
