using System.Diagnostics;
using Dtrain.Collective;
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
    /// <summary>Gradient buckets close once they hold at least this many values (1 MiB of fp32), as DDP's bucket_cap_mb.</summary>
    public const int BucketFloats = 256 * 1024;

    private readonly GradientBuffer gradients;
    private IGradientReducer? boundReducer;
    private readonly IReadOnlyList<GradientBucket> buckets;
    private readonly RingCompression compression;
    /// <summary>The buckets of the step in flight: started (their sums' tasks) or not yet (null).</summary>
    private readonly Task?[] inFlight;
    private long currentStep;
    private CancellationToken currentCancel;
    private bool signalsLive;

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

    /// <summary>Whether buckets are all-reduced while backward still runs (parallelism.overlap).</summary>
    public bool Overlap { get; }

    /// <summary>The gradient buckets, in the order backward makes them ready (the last parameters first).</summary>
    public IReadOnlyList<GradientBucket> Buckets => buckets;

    /// <summary>True while this replica's backward pass runs (for tests: a bucket started then overlaps it).</summary>
    public bool InBackward { get; private set; }

    /// <param name="bucketFloats">Smallest overlap bucket (values); <see cref="BucketFloats"/> unless a test wants small models cut in several.</param>
    /// <param name="spareCores">Cores of this host left after the torch threads of every worker of the job on it: "auto" overlaps only when some are (<see cref="OverlapKinds.Enabled"/>).</param>
    public DataParallelReplica(JobSpec spec, int vocabSize, int classes, Device device, IGradientReducer reducer, int bucketFloats = BucketFloats, int spareCores = 0)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bucketFloats, 1);
        Reducer = reducer;
        Overlap = OverlapKinds.Enabled(spec, spareCores);
        compression = (spec.Parallelism?.GradientCompression ?? CompressionKinds.None) switch
        {
            CompressionKinds.Fp16 => RingCompression.Fp16,
            CompressionKinds.Bf16 => RingCompression.Bf16,
            _ => RingCompression.None,
        };
        Engine = new TrainingEngine(spec, vocabSize, classes, device, perLayer: Overlap);
        gradients = new GradientBuffer(Engine.Parameters);
        // The same buckets with overlap on or off (only when they leave differs): each bucket's ring splits it into
        // its own chunks, and the order in which ranks add an element depends on the chunk it falls in.
        buckets = Engine.TrainingTask.SignalsLayerGradients
            ? PlanBuckets(Engine, gradients, spec.Model.Layers, bucketFloats)
            : [new GradientBucket(0, Engine.Parameters.Count, 0, gradients.Values.Length, GradientBucket.AfterBackward)];
        inFlight = new Task?[buckets.Count];
        if (Overlap) Engine.GradientsReady = OnGradientsReady;
    }

    public long ParameterCount => gradients.GradientCount;

    /// <summary>
    /// Buckets over the flat gradient buffer, cut where backward makes gradients ready: after the head (point = layers)
    /// and after each layer k >= 1 (point k); everything left (layer 0, the embedding) goes when backward ends. Greedy
    /// from the end, so each bucket but the last holds at least <c>bucketFloats</c> values. The bucket holding
    /// the last parameters also carries the loss slot. The plan depends on the model alone: the same on every replica,
    /// and the same whether buckets leave during backward or after it, so overlap does not change a single bit.
    /// </summary>
    private static List<GradientBucket> PlanBuckets(TrainingEngine engine, GradientBuffer gradients, int layers, int bucketFloats)
    {
        var names = engine.Model.named_parameters().Select(p => p.name).ToList();
        int IndexOf(string name) => names.IndexOf(name) is >= 0 and var i ? i : throw new InvalidOperationException($"no parameter {name} (have {string.Join(", ", names)})");
        var cell = engine.Spec.Model.Cell;
        var result = new List<GradientBucket>();
        var endParameter = names.Count;
        var endValue = gradients.Values.Length;
        for (var point = layers; point >= 1; point--)
        {
            var first = IndexOf(point == layers ? "head.weight" : $"rnn.{cell}.weight_ih_l{point}");
            var start = gradients.OffsetOf(first);
            if (endValue - start < bucketFloats) continue;
            result.Add(new GradientBucket(first, endParameter, start, endValue - start, point));
            endParameter = first;
            endValue = start;
        }
        result.Add(new GradientBucket(0, endParameter, 0, endValue, GradientBucket.AfterBackward));
        return result;
    }

    /// <summary>
    /// Runs step <paramref name="step"/> on <paramref name="rows"/> (null = no rows for this replica this step); torch work
    /// runs on <paramref name="torch"/> when given. <paramref name="inject"/>: a deliberate non-finite loss or gradient on
    /// this replica (<see cref="NonFiniteInjection"/>; tests and drills). <see cref="ReplicaStepResult.ReduceMs"/> is the
    /// time spent waiting for the sums after the compute (with overlap, what backward did not hide).
    /// </summary>
    public async Task<ReplicaStepResult> StepAsync(BatchRows? rows, bool resetState, bool carryState, long globalCount, double lr, long step, CancellationToken cancel, TorchThread? torch = null,
        string? inject = null)
    {
        var clock = Stopwatch.StartNew();
        var stats = torch is null ? Compute(rows, resetState, carryState, inject, step, cancel) : await torch.RunAsync(() => Compute(rows, resetState, carryState, inject, step, cancel)).ConfigureAwait(false);
        var computeMs = clock.Elapsed.TotalMilliseconds;
        if (!Alone)
        {
            try
            {
                await Task.WhenAll(inFlight.Select(t => t!)).ConfigureAwait(false);
            }
            finally
            {
                Array.Clear(inFlight);
            }
        }
        var reduceMs = clock.Elapsed.TotalMilliseconds - computeMs;
        activity?.Enter(ActivityPhases.Optimizer);
        var applied = torch is null ? Apply(globalCount, lr, stats.LossSum) : await torch.RunAsync(() => Apply(globalCount, lr, stats.LossSum)).ConfigureAwait(false);
        return new ReplicaStepResult(stats.LossSum, stats.Count, rows?.Rows ?? 0, applied.GradNorm, computeMs, reduceMs, applied.NonFinite);
    }

    private GradientStats Compute(BatchRows? rows, bool resetState, bool carryState, string? inject, long step, CancellationToken cancel)
    {
        if (!Alone && boundReducer != Reducer) BindGradients(cancel);
        if (resetState) Engine.ResetState();
        GradientStats stats = default;
        currentStep = step;
        currentCancel = cancel;
        Array.Clear(inFlight);
        if (rows is not null)
        {
            using var batch = Batch.From(rows);
            // Buckets leave during backward unless a fault is being injected (the poisoned gradient must be in the sum).
            signalsLive = !Alone && inject is null;
            InBackward = true;
            try
            {
                stats = Engine.ComputeGradients(batch, carryState, inject, lossReady: Alone ? null : loss => gradients.LossSum = (float)loss);
            }
            finally
            {
                InBackward = false;
                signalsLive = false;
            }
        }
        else
        {
            Engine.Optimizer.zero_grad();
            if (inject == NonFiniteCauses.Loss) stats = new GradientStats(double.NaN, 0);
            else if (inject == NonFiniteCauses.Gradient) TrainingEngine.PoisonGradient(Engine.Parameters);
        }
        if (!Alone)
        {
            // With rows the loss slot was filled before backward (a bucket may already be carrying it).
            if (rows is null) gradients.LossSum = (float)stats.LossSum;
            // Before the remaining sums start: the ring then reports where each waits (piece k of n, from whom).
            activity?.Enter(ActivityPhases.AllReduce);
            for (var b = 0; b < buckets.Count; b++)
                if (inFlight[b] is null) Start(b);
        }
        return stats;
    }

    /// <summary>
    /// The first step with a reducer (every replica of the generation makes it at the same step): ask the reducer for
    /// the gradient buffer's memory — the shared-memory group's registered buffer makes every sum zero-copy — or keep
    /// a managed array. A collective call: it waits for the other replicas.
    /// </summary>
    private void BindGradients(CancellationToken cancel)
    {
        var reducer = Reducer;
        gradients.Bind(reducer.AllocateBufferAsync(gradients.Length, cancel).GetAwaiter().GetResult());
        boundReducer = reducer;
    }

    /// <summary>Whether the gradient buffer lives in memory the reducer gave (its sums are zero-copy).</summary>
    public bool GradientsRegistered => gradients.IsBound;

    /// <summary>Backward reached <paramref name="point"/> (torch thread, inside loss.backward()): start the buckets it completes.</summary>
    private void OnGradientsReady(int point)
    {
        if (!signalsLive) return;
        for (var b = 0; b < buckets.Count; b++)
            if (buckets[b].Point == point && inFlight[b] is null) Start(b);
    }

    /// <summary>Copies bucket <paramref name="b"/>'s gradients out and starts its sum; never throws (it runs inside libtorch's backward).</summary>
    private void Start(int b)
    {
        try
        {
            var bucket = buckets[b];
            gradients.Gather(bucket.FirstParameter, bucket.EndParameter);
            // Distinct operation ids per bucket, the same on every replica; one bucket keeps the step number itself.
            var operation = checked(currentStep * buckets.Count + b);
            inFlight[b] = Reducer.SumAsync(gradients.Values.Slice(bucket.Start, bucket.Length), operation, compression, currentCancel);
        }
        catch (Exception e)
        {
            inFlight[b] = Task.FromException(e);
        }
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

    public void Dispose()
    {
        gradients.Dispose();
        Engine.Dispose();
    }
}

/// <summary>
/// A contiguous run of the flat gradient buffer, all-reduced as one operation: the gradients of parameters
/// [<paramref name="FirstParameter"/>, <paramref name="EndParameter"/>) at values [<paramref name="Start"/>, +<paramref name="Length"/>),
/// ready when backward reaches <paramref name="Point"/> (<see cref="AfterBackward"/>: when backward ends).
/// </summary>
public sealed record GradientBucket(int FirstParameter, int EndParameter, int Start, int Length, int Point)
{
    public const int AfterBackward = -1;
}
