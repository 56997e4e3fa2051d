using System.Diagnostics;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Distributed;

/// <summary>
/// What one replica did in one data-parallel step. <paramref name="NonFinite"/>: null when the optimizer step was
/// applied; "loss" or "gradient" (<see cref="NonFiniteCauses"/>) when the step's loss or gradient, summed over every
/// replica, was not finite and every replica skipped it.
/// </summary>
public sealed record ReplicaStepResult(double LossSum, long Count, int Rows, double GradNorm, double ComputeMs, double ReduceMs, string? NonFinite = null)
{
    public bool Skipped => NonFinite is not null;
}

/// <summary>
/// One model replica of a data-parallel job: computes the gradient of the summed loss on its rows of the global
/// batch, sums gradients with every other replica through <see cref="IGradientReducer"/>, then divides by the global
/// count and steps the optimizer — so all replicas take the same step as one process on the whole batch. The reduced
/// buffer carries every replica's summed loss in one more slot: when the summed loss or the summed gradient is not
/// finite, every replica sees it in the same reduced values and skips the step alike.
/// </summary>
public sealed class DataParallelReplica : IDisposable
{
    private readonly GradientBuffer gradients;
    /// <summary>A world of one: the gradients stay in the model, no copy out and back.</summary>
    private bool Alone => Reducer.WorldSize == 1;

    /// <summary>How gradients are summed with the other replicas; replaced when the membership (and the ring) changes.</summary>
    public IGradientReducer Reducer { get; set; }

    public TrainingEngine Engine { get; }

    /// <summary>Optional: the worker's live phase (forward, backward, all-reduce, optimizer), set as the step goes.</summary>
    public WorkerActivity? Activity
    {
        get => activity;
        set
        {
            activity = value;
            Engine.PhaseChanged = value is null ? null : p => value.Enter(p);
        }
    }

    private WorkerActivity? activity;

    public DataParallelReplica(JobSpec spec, int vocabSize, int classes, Device device, IGradientReducer reducer)
    {
        Reducer = reducer;
        Engine = new TrainingEngine(spec, vocabSize, classes, device);
        gradients = new GradientBuffer(Engine.Parameters);
    }

    public long ParameterCount => gradients.GradientCount;

    /// <summary>
    /// Runs step <paramref name="step"/> on <paramref name="rows"/> (null = no rows for this replica this step); torch work
    /// runs on <paramref name="torch"/> when given. <paramref name="inject"/>: a deliberate non-finite loss or gradient on
    /// this replica (<see cref="NonFiniteInjection"/>; tests and drills).
    /// </summary>
    public async Task<ReplicaStepResult> StepAsync(BatchRows? rows, bool resetState, bool carryState, long globalCount, double lr, long step, CancellationToken cancel, TorchThread? torch = null,
        string? inject = null)
    {
        var clock = Stopwatch.StartNew();
        var stats = torch is null ? Compute(rows, resetState, carryState, inject) : await torch.RunAsync(() => Compute(rows, resetState, carryState, inject)).ConfigureAwait(false);
        var computeMs = clock.Elapsed.TotalMilliseconds;
        if (!Alone)
        {
            activity?.Enter(ActivityPhases.AllReduce);
            await Reducer.SumAsync(gradients.Values, step, cancel).ConfigureAwait(false);
        }
        var reduceMs = clock.Elapsed.TotalMilliseconds - computeMs;
        activity?.Enter(ActivityPhases.Optimizer);
        var applied = torch is null ? Apply(globalCount, lr, stats.LossSum) : await torch.RunAsync(() => Apply(globalCount, lr, stats.LossSum)).ConfigureAwait(false);
        return new ReplicaStepResult(stats.LossSum, stats.Count, rows?.Rows ?? 0, applied.GradNorm, computeMs, reduceMs, applied.NonFinite);
    }

    private GradientStats Compute(BatchRows? rows, bool resetState, bool carryState, string? inject)
    {
        if (resetState) Engine.ResetState();
        GradientStats stats = default;
        if (rows is not null)
        {
            using var batch = Batch.From(rows);
            stats = Engine.ComputeGradients(batch, carryState, inject);
        }
        else
        {
            Engine.Optimizer.zero_grad();
            if (inject == NonFiniteCauses.Loss) stats = new GradientStats(double.NaN, 0);
            else if (inject == NonFiniteCauses.Gradient) TrainingEngine.PoisonGradient(Engine.Parameters);
        }
        if (!Alone)
        {
            gradients.Gather();
            gradients.LossSum = (float)stats.LossSum;
        }
        return stats;
    }

    private AppliedStep Apply(long globalCount, double lr, double localLossSum)
    {
        if (!Alone) gradients.Scatter();
        else if (Engine.Parameters.Any(p => p.grad is null))
        {
            // A parameter the step did not reach gets an all-zero gradient, as Gather and Scatter would have given it.
            using var _ = no_grad();
            foreach (var p in Engine.Parameters) p.grad ??= zeros_like(p);
        }
        // Every replica decides on the same reduced values (the loss slot, the gradients): all skip, or none does.
        return Engine.ApplyGradients(globalCount, lr, Alone ? localLossSum : gradients.LossSum);
    }

    /// <summary>Sum of all parameter values in double precision: replicas that took the same steps agree exactly.</summary>
    public double ParameterChecksum() => ParameterChecksums.Sum(Engine.Parameters);

    public void Dispose() => Engine.Dispose();
}
