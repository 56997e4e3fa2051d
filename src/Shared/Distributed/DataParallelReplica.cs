using System.Diagnostics;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Distributed;

/// <summary>What one replica did in one data-parallel step.</summary>
public sealed record ReplicaStepResult(double LossSum, long Count, int Rows, double GradNorm, double ComputeMs, double ReduceMs);

/// <summary>
/// One model replica of a data-parallel job: computes the gradient of the summed loss on its rows of the global
/// batch, sums gradients with every other replica through <see cref="IGradientReducer"/>, then divides by the global
/// count and steps the optimizer — so all replicas take the same step as one process on the whole batch.
/// </summary>
public sealed class DataParallelReplica : IDisposable
{
    private readonly GradientBuffer gradients;
    /// <summary>A world of one: the gradients stay in the model, no copy out and back.</summary>
    private bool Alone => Reducer is LocalReducer;

    /// <summary>How gradients are summed with the other replicas; replaced when the membership (and the ring) changes.</summary>
    public IGradientReducer Reducer { get; set; }

    public TrainingEngine Engine { get; }

    public DataParallelReplica(JobSpec spec, int vocabSize, int classes, Device device, IGradientReducer reducer)
    {
        Reducer = reducer;
        Engine = new TrainingEngine(spec, vocabSize, classes, device);
        gradients = new GradientBuffer(Engine.Parameters);
    }

    public long ParameterCount => gradients.Values.Length;

    /// <summary>Runs step <paramref name="step"/> on <paramref name="rows"/> (null = no rows for this replica this step); torch work runs on <paramref name="torch"/> when given.</summary>
    public async Task<ReplicaStepResult> StepAsync(BatchRows? rows, bool resetState, bool carryState, long globalCount, double lr, long step, CancellationToken cancel, TorchThread? torch = null)
    {
        var clock = Stopwatch.StartNew();
        var stats = torch is null ? Compute(rows, resetState, carryState) : await torch.RunAsync(() => Compute(rows, resetState, carryState)).ConfigureAwait(false);
        var computeMs = clock.Elapsed.TotalMilliseconds;
        if (!Alone) await Reducer.SumAsync(gradients.Values, step, cancel).ConfigureAwait(false);
        var reduceMs = clock.Elapsed.TotalMilliseconds - computeMs;
        var norm = torch is null ? Apply(globalCount, lr) : await torch.RunAsync(() => Apply(globalCount, lr)).ConfigureAwait(false);
        return new ReplicaStepResult(stats.LossSum, stats.Count, rows?.Rows ?? 0, norm, computeMs, reduceMs);
    }

    private GradientStats Compute(BatchRows? rows, bool resetState, bool carryState)
    {
        if (resetState) Engine.ResetState();
        GradientStats stats = default;
        if (rows is not null)
        {
            using var batch = Batch.From(rows);
            stats = Engine.ComputeGradients(batch, carryState);
        }
        else
        {
            Engine.Optimizer.zero_grad();
        }
        if (!Alone) gradients.Gather();
        return stats;
    }

    private double Apply(long globalCount, double lr)
    {
        if (!Alone) gradients.Scatter();
        else if (Engine.Parameters.Any(p => p.grad is null))
        {
            // A parameter the step did not reach gets an all-zero gradient, as Gather and Scatter would have given it.
            using var _ = no_grad();
            foreach (var p in Engine.Parameters) p.grad ??= zeros_like(p);
        }
        return Engine.ApplyGradients(globalCount, lr);
    }

    /// <summary>Sum of all parameter values in double precision: replicas that took the same steps agree exactly.</summary>
    public double ParameterChecksum() => ParameterChecksums.Sum(Engine.Parameters);

    public void Dispose() => Engine.Dispose();
}
