using Dtrain.Distributed;
using Prometheus;

namespace Dtrain.Worker;

/// <summary>
/// This worker's Prometheus figures (GET /metrics on its HTTP listener, Worker:HttpPort): steps, compute and all-reduce
/// time, all-reduce bytes, the ring transport in use and the live phase. Labels: job id, transport, phase — never a step.
/// </summary>
public sealed class WorkerMetrics
{
    private static readonly double[] Seconds = Histogram.ExponentialBuckets(0.001, 2, 16);   // 1 ms .. 33 s

    public CollectorRegistry Registry { get; } = Rpc.MetricsEndpoint.NewRegistry();
    private readonly Counter steps;
    private readonly Histogram compute;
    private readonly Histogram allReduce;
    private readonly Counter allReduceBytes;
    private readonly Gauge phase;
    private readonly Gauge phaseSeconds;
    private readonly Gauge transport;
    private readonly Gauge step;
    private readonly Histogram dataWait;

    public WorkerMetrics(WorkerSlot slot)
    {
        var f = Metrics.WithCustomRegistry(Registry);
        steps = f.CreateCounter("dtrain_worker_steps_total", "Training steps this worker ran, by job.", "job_id");
        compute = f.CreateHistogram("dtrain_worker_compute_seconds", "Forward and backward time of one step on this worker (a pipeline stage: its compute, bubble excluded).",
            new HistogramConfiguration { LabelNames = ["job_id"], Buckets = Seconds });
        allReduce = f.CreateHistogram("dtrain_worker_allreduce_seconds", "Time of one step's gradient all-reduce on this worker, waiting for the slowest peer included.",
            new HistogramConfiguration { LabelNames = ["job_id", "transport"], Buckets = Seconds });
        allReduceBytes = f.CreateCounter("dtrain_worker_allreduce_bytes_total", "Bytes this worker sent in ring all-reduces (2(W-1)/W of the gradient buffer per step).", "job_id", "transport");
        phase = f.CreateGauge("dtrain_worker_phase", "1 for the phase this worker is in now (idle, forward, backward, all-reduce, ...), 0 for the others.", "phase");
        phaseSeconds = f.CreateGauge("dtrain_worker_phase_seconds", "How long this worker has been in its current phase.");
        transport = f.CreateGauge("dtrain_worker_transport_info", "1 for the ring transport this worker's job uses now (grpc, ...; none without a ring).", "transport");
        step = f.CreateGauge("dtrain_worker_step", "The step this worker works on (from 1; 0 when idle).");
        dataWait = f.CreateHistogram("dtrain_worker_data_wait_seconds", "Dataset jobs: how long one step waited for its rows to be read from the dataset (0 when read ahead in time).",
            new HistogramConfiguration { LabelNames = ["job_id"], Buckets = [0, .. Seconds] });
        Registry.AddBeforeCollectCallback(() =>
        {
            var a = slot.Activity.Snapshot();
            foreach (var p in ActivityPhases.All) phase.WithLabels(p).Set(p == a.Phase ? 1 : 0);
            phaseSeconds.Set(a.InPhase.TotalSeconds);
            step.Set(a.Step);
            var now = a.Transport == "" ? "none" : a.Transport;
            foreach (var t in transport.GetAllLabelValues().Select(l => l[0]).Where(t => t != now).ToList()) transport.RemoveLabelled(t);
            transport.WithLabels(now).Set(1);
        });
    }

    /// <summary>A dataset job's step waited <paramref name="wait"/> for its rows.</summary>
    public void DataWait(string job, TimeSpan wait) => dataWait.WithLabels(job).Observe(wait.TotalSeconds);

    /// <summary>One step done: <paramref name="gradientFloats"/> summed over a ring of <paramref name="world"/> (0 when there was no all-reduce).</summary>
    public void Step(string job, double computeMs, double allReduceMs, long gradientFloats, int world, string ringTransport)
    {
        steps.WithLabels(job).Inc();
        compute.WithLabels(job).Observe(computeMs / 1000);
        if (world <= 1) return;
        var t = ringTransport == "" ? "unknown" : ringTransport;
        allReduce.WithLabels(job, t).Observe(allReduceMs / 1000);
        if (gradientFloats > 0) allReduceBytes.WithLabels(job, t).Inc(2.0 * (world - 1) / world * gradientFloats * sizeof(float));
    }
}
