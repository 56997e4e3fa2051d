using System.Text.Json;
using Dtrain.Rpc;
using Dtrain.Server.Auth;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Prometheus;

namespace Dtrain.Server;

/// <summary>
/// The coordinator's Prometheus figures (GET /metrics on its HTTP listener): jobs by state, queue length, workers by
/// state; per job (label "job_id": Prometheus keeps "job" for its scrape job; never a step label): step, loss, samples/s, learning rate, validation metrics, step /
/// compute / all-reduce time histograms, checkpoint save time and size, stalled workers. Step and evaluation figures
/// come from each job's event stream (followed like a watcher); the rest is read when Prometheus scrapes. A finished
/// job's series are dropped <see cref="KeepFinished"/> after it ends.
/// </summary>
public sealed class CoordinatorMetrics : BackgroundService
{
    private static readonly double[] Seconds = Histogram.ExponentialBuckets(0.001, 2, 18);   // 1 ms .. 131 s
    private static readonly TimeSpan KeepFinished = TimeSpan.FromMinutes(10);
    private static readonly string[] ValidationMetrics = ["loss", "accuracy", "macro_f1", "perplexity", "bits_per_token"];

    private readonly JobManager jobs;
    private readonly WorkerRegistry registry;
    private readonly StallMonitor stalls;
    private readonly TimeProvider clock;
    private readonly ILogger<CoordinatorMetrics> log;
    private readonly Dictionary<string, Task> followed = [];
    private readonly HashSet<string> labelled = [];

    public CollectorRegistry Registry { get; } = MetricsEndpoint.NewRegistry();
    private readonly Gauge jobsByState, queueLength, workersByState;
    private readonly Gauge step, totalSteps, loss, samplesPerSecond, learningRate, jobWorkers, validation, checkpointSeconds, checkpointBytes, stalled;
    private readonly Histogram stepSeconds, computeSeconds, allReduceSeconds;
    private readonly Counter steps, skipped;

    public CoordinatorMetrics(JobManager jobs, WorkerRegistry registry, StallMonitor stalls, TimeProvider clock, ILogger<CoordinatorMetrics> log)
    {
        this.log = log;
        this.jobs = jobs;
        this.registry = registry;
        this.stalls = stalls;
        this.clock = clock;
        // Followed from the moment the job exists: a short job may start and end between two of the loop's ticks.
        jobs.JobAdded += Follow;
        var f = Prometheus.Metrics.WithCustomRegistry(Registry);
        jobsByState = f.CreateGauge("dtrain_jobs", "Jobs the coordinator knows, by state.", "state");
        queueLength = f.CreateGauge("dtrain_queue_length", "Jobs queued, waiting for workers.");
        workersByState = f.CreateGauge("dtrain_workers", "Registered workers, by state (joining, idle, training, draining, cordoned, lost).", "state");
        step = f.CreateGauge("dtrain_job_step", "Steps the job has committed.", "job_id");
        totalSteps = f.CreateGauge("dtrain_job_total_steps", "Steps the job runs in all.", "job_id");
        loss = f.CreateGauge("dtrain_job_loss", "Training loss of the job's last step.", "job_id");
        samplesPerSecond = f.CreateGauge("dtrain_job_samples_per_second", "The job's training throughput.", "job_id");
        learningRate = f.CreateGauge("dtrain_job_learning_rate", "Learning rate of the job's last step.", "job_id");
        jobWorkers = f.CreateGauge("dtrain_job_workers", "Workers the job runs on.", "job_id");
        validation = f.CreateGauge("dtrain_job_validation", "The job's last validation metrics (loss, accuracy, macro_f1, perplexity, bits_per_token).", "job_id", "metric");
        checkpointSeconds = f.CreateGauge("dtrain_job_checkpoint_save_seconds", "How long fetching and saving the job's newest checkpoint took.", "job_id");
        checkpointBytes = f.CreateGauge("dtrain_job_checkpoint_bytes", "Size of the job's newest checkpoint.", "job_id");
        stalled = f.CreateGauge("dtrain_job_stalled_workers", "Workers the stall warning names in the job now (Coordinator:StallWarningSeconds).", "job_id");
        var histogram = new HistogramConfiguration { LabelNames = ["job_id"], Buckets = Seconds };
        stepSeconds = f.CreateHistogram("dtrain_job_step_seconds", "The coordinator's whole step time (compute, all-reduce, optimizer, calls).", histogram);
        computeSeconds = f.CreateHistogram("dtrain_job_compute_seconds", "The slowest replica's forward and backward time per step.", histogram);
        allReduceSeconds = f.CreateHistogram("dtrain_job_allreduce_seconds", "The slowest replica's all-reduce time per step.", histogram);
        steps = f.CreateCounter("dtrain_job_steps_total", "Steps run since this coordinator started (skipped ones included).", "job_id");
        skipped = f.CreateCounter("dtrain_job_skipped_steps_total", "Steps whose loss or gradient was not finite, skipped by every replica.", "job_id");
        Registry.AddBeforeCollectCallback(Refresh);
    }

    /// <summary>Maps GET /metrics and GET /metrics/targets (Prometheus HTTP service discovery: the workers' /metrics addresses) on the HTTP listener, admitted by <see cref="Gate"/>.</summary>
    public static void Map(WebApplication app, CoordinatorOptions options)
    {
        var metrics = app.Services.GetRequiredService<CoordinatorMetrics>();
        var gate = Gate(app.Services, options);
        MetricsEndpoint.Map(app, metrics.Registry, gate);
        var targets = app.MapGet(MetricsEndpoint.Path + "/targets", (HttpContext http) =>
        {
            http.Response.ContentType = "application/json";
            return http.Response.WriteAsync(metrics.Targets(), http.RequestAborted);
        });
        MetricsEndpoint.Guard(targets, gate);
        GrpcServerHost.RequireHttpPort(targets, app);
    }

    /// <summary>The roles whose tokens may scrape: metrics (made for Prometheus), and viewer and admin, who read every job anyway.</summary>
    public static readonly Role[] ScrapeRoles = [Role.Metrics, Role.Viewer, Role.Admin];

    /// <summary>
    /// Who may read /metrics and /metrics/targets — every job's figures and every worker's name and address, so never a
    /// submitter: over TLS a client certificate from the cluster CA (as the gRPC port asks); and whenever auth is on
    /// (Coordinator:Auth; beyond loopback it always is) a bearer token of role metrics, viewer or admin, or the
    /// Coordinator:MetricsToken when set (which is then needed even with auth off). On loopback with auth off and no
    /// scrape token, anyone on this machine, as the Jobs API.
    /// </summary>
    public static HttpGate Gate(IServiceProvider services, CoordinatorOptions options)
    {
        var mode = services.GetRequiredService<ServerMode>();
        var tokens = services.GetRequiredService<TokenAuthenticator>();
        var scrapeToken = string.IsNullOrWhiteSpace(options.MetricsToken) ? null : options.MetricsToken;
        var make = "`dtrain tokens create --role metrics --name prometheus` on the coordinator's host";
        return http =>
        {
            var path = http.Request.Path.ToString();
            if (HttpAccess.RequireCertificate(http, mode, path) is { } refusal) return refusal;
            if (scrapeToken is not null && HttpAccess.HasBearer(http, scrapeToken)) return null;
            var state = tokens.Current();
            if (!state.Required)
                return scrapeToken is null ? null
                    : new HttpRefusal(StatusCodes.Status401Unauthorized, $"{path} needs \"Authorization: Bearer TOKEN\" with Coordinator:MetricsToken");
            var header = http.Request.Headers.Authorization.ToString();
            var peer = http.Connection.RemoteIpAddress is { } ip ? $"{ip}:{http.Connection.RemotePort}" : "unknown";
            Caller caller;
            try
            {
                caller = tokens.Authenticate(header.Length == 0 ? null : header, peer, $"metrics GET {path}");
            }
            catch (AccessDeniedException e)
            {
                return new HttpRefusal(Refusals.HttpStatusOf(e.Kind),
                    $"{path}: {e.Message} (Prometheus: authorization credentials_file with a token of role metrics: {make})");
            }
            if (ScrapeRoles.Contains(caller.Role)) return null;
            return new HttpRefusal(StatusCodes.Status403Forbidden,
                $"{path}: token {caller.TokenId} (\"{caller.Name}\") has role {caller.Role.Name()}, which may not read every job's metrics; that needs metrics, viewer or admin ({make})");
        };
    }

    /// <summary>
    /// Prometheus http_sd_config JSON: one target group per worker that registered an HTTP address (Worker:HttpPort) and is
    /// not lost, labelled with its id, name and scheme (__scheme__ for a TLS listener).
    /// </summary>
    public string Targets()
    {
        var groups = registry.Snapshot()
            .Where(w => w.State != MembershipState.Lost && w.HttpAddress != "")
            .Select(w =>
            {
                var uri = new Uri(w.HttpAddress);
                return new Dictionary<string, object>
                {
                    ["targets"] = new[] { uri.Authority },
                    ["labels"] = new Dictionary<string, string> { ["worker"] = w.Id, ["worker_name"] = w.Name, ["__scheme__"] = uri.Scheme },
                };
            });
        return JsonSerializer.Serialize(groups);
    }

    private void Refresh()
    {
        lock (labelled) RefreshLocked();
    }

    private void RefreshLocked()
    {
        var all = jobs.List().Select(j => (j.Id, State: j.Read())).ToList();
        foreach (var s in Enum.GetValues<JobStatus>())
            jobsByState.WithLabels(Name(s)).Set(all.Count(j => j.State.Status == s));
        queueLength.Set(all.Count(j => j.State.Status == JobStatus.Queued));
        var workers = registry.Snapshot();
        foreach (var s in Enum.GetValues<MembershipState>())
            workersByState.WithLabels(Name(s)).Set(workers.Count(w => w.State == s));
        var culprits = stalls.StalledWorkers();
        var now = clock.GetUtcNow();
        foreach (var (id, (status, j)) in all)
        {
            var finished = JobLifecycle.IsFinished(status);
            if (status == JobStatus.Queued || (finished && now - (j.Finished ?? DateTimeOffset.UnixEpoch) > KeepFinished))
            {
                if (labelled.Remove(id)) Forget(id);
                continue;
            }
            labelled.Add(id);
            step.WithLabels(id).Set(j.Step);
            totalSteps.WithLabels(id).Set(j.TotalSteps);
            if (j.Step > 0) loss.WithLabels(id).Set(j.Loss);
            samplesPerSecond.WithLabels(id).Set(j.SamplesPerSecond);
            jobWorkers.WithLabels(id).Set(j.WorkerIds.Count);
            stalled.WithLabels(id).Set(finished ? 0 : workers.Count(w => w.JobId == id && culprits.Contains(w.Id)));
            if (j.LastEval is { } m)
            {
                validation.WithLabels(id, "loss").Set(m.Loss);
                if (m.Accuracy is { } accuracy) validation.WithLabels(id, "accuracy").Set(accuracy);
                if (m.MacroF1 is { } f1) validation.WithLabels(id, "macro_f1").Set(f1);
                if (m.Perplexity is { } perplexity) validation.WithLabels(id, "perplexity").Set(perplexity);
                if (m.BitsPerToken is { } bits) validation.WithLabels(id, "bits_per_token").Set(bits);
            }
            if (j.CheckpointBytes > 0)
            {
                checkpointSeconds.WithLabels(id).Set(j.CheckpointSeconds);
                checkpointBytes.WithLabels(id).Set(j.CheckpointBytes);
            }
        }
    }

    private void Forget(string id)
    {
        foreach (var g in new[] { step, totalSteps, loss, samplesPerSecond, learningRate, jobWorkers, checkpointSeconds, checkpointBytes, stalled }) g.RemoveLabelled(id);
        foreach (var m in ValidationMetrics) validation.RemoveLabelled(id, m);
        foreach (var h in new[] { stepSeconds, computeSeconds, allReduceSeconds }) h.RemoveLabelled(id);
        steps.RemoveLabelled(id);
        skipped.RemoveLabelled(id);
    }

    private static string Name<T>(T state) where T : struct, Enum
    {
        var s = state.ToString();
        return string.Concat(s.Select((c, i) => i > 0 && char.IsUpper(c) ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));
    }

    private readonly HashSet<string> seen = [];

    private readonly CancellationTokenSource stopping = new();

    /// <summary>Follows <paramref name="job"/>'s events once (finished ones too: Watch replays their history).</summary>
    private void Follow(JobRecord job)
    {
        lock (followed)
        {
            if (stopping.IsCancellationRequested || !seen.Add(job.Id)) return;
            followed[job.Id] = FollowAsync(job, stopping.Token);
        }
    }

    public override Task StopAsync(CancellationToken cancellationToken)
    {
        stopping.Cancel();
        return base.StopAsync(cancellationToken);
    }

    /// <summary>Follows every job once, from its start (jobs added before this service started included): its step events feed the histograms and counters.</summary>
    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromMilliseconds(500), clock);
        do
        {
            try
            {
                foreach (var job in jobs.List()) Follow(job);
                lock (followed)
                    foreach (var done in followed.Where(f => f.Value.IsCompleted).Select(f => f.Key).ToList())
                        followed.Remove(done);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // Metrics must never take the coordinator down (a failing BackgroundService stops the host).
                log.LogError(e, "metrics: following jobs failed");
            }
        }
        while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false));
    }

    private async Task FollowAsync(JobRecord job, CancellationToken stop)
    {
        var reader = job.Watch();
        try
        {
            await foreach (var e in reader.ReadAllAsync(stop).ConfigureAwait(false))
            {
                if (e is not JobNotice.Step { Report: var s }) continue;
                var id = job.Id;
                steps.WithLabels(id).Inc();
                // The series exists (at 0) from the job's first step, as docs/cluster.md lists it, not only after a skip.
                skipped.WithLabels(id).Inc(s.Skipped ? 1 : 0);
                if (s.Lr > 0) learningRate.WithLabels(id).Set(s.Lr);
                if (s.StepMs > 0) stepSeconds.WithLabels(id).Observe(s.StepMs / 1000);
                if (s.ComputeMs > 0) computeSeconds.WithLabels(id).Observe(s.ComputeMs / 1000);
                if (s.AllreduceMs > 0) allReduceSeconds.WithLabels(id).Observe(s.AllreduceMs / 1000);
            }
        }
        catch (OperationCanceledException)
        {
            // The coordinator stops.
        }
        catch (Exception e)
        {
            log.LogError(e, "metrics: following job {Id} failed", job.Id);
        }
        finally
        {
            job.Unwatch(reader);
        }
    }
}
