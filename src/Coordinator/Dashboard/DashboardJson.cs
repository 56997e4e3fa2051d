using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Training.Tasks;
using Microsoft.AspNetCore.Http;
using static Dtrain.Dashboard.DashboardAccess;

namespace Dtrain.Dashboard;

/// <summary>The JSON the dashboard's API answers with: jobs, a job's detail, metrics rows, workers.</summary>
internal static class DashboardJson
{
    internal static string State(JobState s) => s.ToString().ToLowerInvariant();

    /// <summary>A job as the API shows it; eta_seconds from its progress since it started (null when unknown).</summary>
    public static JsonObject JobJson(JobInfo i, DateTimeOffset now)
    {
        double? eta = null;
        var done = i.Step - i.StartStep;
        if (i.State is JobState.Running or JobState.Waiting && i.StartedUnixMs > 0 && done > 0 && i.TotalSteps > i.Step)
            eta = (now.ToUnixTimeMilliseconds() - i.StartedUnixMs) / 1000.0 / done * (i.TotalSteps - i.Step);
        var o = new JsonObject
        {
            ["id"] = i.JobId,
            ["name"] = i.Name,
            ["task"] = i.Task,
            ["state"] = State(i.State),
            ["message"] = i.Message,
            ["owner"] = i.Owner,
            ["stored_bytes"] = i.StoredBytes,
            ["step"] = i.Step,
            ["total_steps"] = i.TotalSteps,
            ["progress"] = i.TotalSteps > 0 ? Math.Min(1.0, (double)i.Step / i.TotalSteps) : 0.0,
            ["eta_seconds"] = eta,
            ["epoch"] = i.Epoch + 1,
            ["loss"] = Finite(i.Loss),
            ["samples_per_second"] = Finite(i.SamplesPerSecond),
            ["workers"] = new JsonArray([.. i.WorkerIds.Select(w => (JsonNode)JsonValue.Create(w))]),
            ["workers_requested"] = i.WorkersRequested,
            ["parameters"] = i.Parameters,
            ["submitted_unix_ms"] = i.SubmittedUnixMs,
            ["started_unix_ms"] = i.StartedUnixMs,
            ["finished_unix_ms"] = i.FinishedUnixMs,
            ["generation"] = i.Generation,
            ["restarts"] = i.Restarts,
            ["resumed_from"] = i.ResumedFrom,
            ["has_checkpoint"] = i.Checkpoint.Length > 0,
        };
        if (i.LastEval is { } m) o["last_eval"] = MetricsJson(m);
        return o;
    }

    internal static JsonObject MetricsJson(Metrics m)
    {
        var o = new JsonObject { ["loss"] = Finite(m.Loss), ["count"] = m.Count };
        if (m.HasAccuracy) o["accuracy"] = Finite(m.Accuracy);
        if (m.HasMacroF1) o["macro_f1"] = Finite(m.MacroF1);
        if (m.HasPerplexity) o["perplexity"] = Finite(m.Perplexity);
        if (m.HasBitsPerToken) o["bits_per_token"] = Finite(m.BitsPerToken);
        return o;
    }

    internal static double? Finite(double x) => double.IsFinite(x) ? x : null;

    internal static JsonNode RowJson(MetricsRow r)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer)) MetricsTable.WriteJson(r, json);
        return JsonNode.Parse(buffer.ToArray())!;
    }

    internal static JsonObject JobDetail(HttpContext http, JobRecord job)
    {
        var o = JobJson(job.ToProto(), Services(http).Clock.GetUtcNow());
        // As submitted: the data as the user named it, no path on this coordinator.
        o["spec"] = JsonNode.Parse(JobSpecSerializer.Serialize(job.SpecAsSubmitted));
        var dir = Path.Combine(job.Dir, "checkpoints");
        var files = Directory.Exists(dir) ? new DirectoryInfo(dir).GetFiles("ckpt-*.dtck").OrderBy(f => f.Name, StringComparer.Ordinal) : Enumerable.Empty<FileInfo>();
        o["checkpoints"] = new JsonArray([.. files.Select(f => (JsonNode)new JsonObject
        {
            ["name"] = f.Name,
            ["step"] = long.TryParse(f.Name.AsSpan(5, f.Name.Length - 10), NumberStyles.None, CultureInfo.InvariantCulture, out var step) ? step : null,
            ["bytes"] = f.Length,
            ["modified_unix_ms"] = new DateTimeOffset(f.LastWriteTimeUtc).ToUnixTimeMilliseconds(),
            ["url"] = $"/api/jobs/{Uri.EscapeDataString(job.Id)}/checkpoints/{Uri.EscapeDataString(f.Name)}",
        })]);
        o["language_model"] = TrainingTasks.For(job.Spec).PredictsNextToken;
        return o;
    }

    internal static JsonArray WorkersJson(HttpContext http)
    {
        var parts = Services(http);
        parts.Registry.Sweep();
        var now = parts.Clock.GetUtcNow().ToUnixTimeMilliseconds();
        return new JsonArray([.. parts.Registry.Snapshot().Select(w => (JsonNode)WorkerJson(w.ToInfo(), now))]);
    }

    internal static JsonObject WorkerJson(WorkerInfo w, long now) => new()
    {
        ["id"] = w.WorkerId,
        ["name"] = w.Name,
        ["address"] = w.Address,
        ["state"] = w.State.ToString().ToLowerInvariant(),
        ["job"] = w.JobId,
        // The worker's live phase from its last heartbeat (forward, all-reduce reduce-scatter piece k/n waiting on wN, ...).
        ["phase"] = w.Activity is { Phase.Length: > 0 } a ? Distributed.WorkerActivity.Describe(a.Phase, a.Detail, a.WaitingOn) : "",
        ["step"] = w.Activity?.Step ?? 0,
        ["in_phase_seconds"] = w.Activity is { } p ? p.InPhaseMs / 1000.0 : 0,
        ["last_heartbeat_unix_ms"] = w.LastHeartbeatUnixMs,
        ["heartbeat_age_seconds"] = Math.Max(0, now - w.LastHeartbeatUnixMs) / 1000.0,
        ["cores"] = w.Cores,
        ["device"] = w.Device,
        ["memory_bytes"] = w.MemoryBytes,
        ["threads"] = w.Threads,
        ["cordoned"] = w.Cordoned,
        ["message"] = w.Message,
    };
}
