using Prometheus;

namespace Dtrain.Serving;

/// <summary>The model server's Prometheus metrics (its own registry, served at /metrics).</summary>
internal sealed class ServingMetrics
{
    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();
    public Counter Requests { get; }
    public Histogram Latency { get; }
    public Histogram BatchSize { get; }
    public Gauge QueueDepth { get; }
    public Histogram QueueWait { get; }
    public Histogram Pass { get; }
    public Counter PassesByThreads { get; }

    public ServingMetrics()
    {
        var factory = Metrics.WithCustomRegistry(Registry);
        Requests = factory.CreateCounter("dtrain_serving_requests_total", "HTTP requests answered, by route and status code.", "route", "status");
        Latency = factory.CreateHistogram("dtrain_serving_request_duration_seconds", "Time from a request's arrival to its last byte, by route.",
            new HistogramConfiguration { LabelNames = ["route"], Buckets = Histogram.ExponentialBuckets(0.0005, 2, 18) });
        BatchSize = factory.CreateHistogram("dtrain_serving_batch_size", "Texts classified, or generations stepped by one token, in one forward pass.",
            new HistogramConfiguration { Buckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096] });
        QueueDepth = factory.CreateGauge("dtrain_serving_queue_depth", "Requests waiting for the inference thread.");
        QueueWait = factory.CreateHistogram("dtrain_serving_queue_wait_seconds", "Time from a request's queueing to the inference thread taking it into a forward pass (its batch's window included).",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0001, 2, 18) });
        Pass = factory.CreateHistogram("dtrain_serving_pass_seconds", "Time of one forward pass: a batch of texts classified, or one token drawn for the generations running.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0001, 2, 18) });
        PassesByThreads = factory.CreateCounter("dtrain_serving_passes_total", "Forward passes, by the torch threads they ran on (--threads: fixed, or auto = chosen per pass from its size).", "threads");
    }
}
