using System.Text;
using System.Text.Json.Nodes;
using Dtrain.Server;
using Dtrain.Training.Tasks;
using Microsoft.AspNetCore.Http;
using static Dtrain.Dashboard.DashboardAccess;

namespace Dtrain.Dashboard;

/// <summary>What the dashboard lets a caller download: a job's metrics as CSV, its checkpoints, and a generated sample of a language model.</summary>
internal static class DashboardDownloads
{
    internal static IResult MetricsCsv(HttpContext http, string id)
    {
        try
        {
            var job = Job(http, Authenticate(http), id, "metrics");
            var csv = MetricsTable.Csv(MetricsTable.Rows(job.History().Select(ProtoMapper.EventOf)));
            return Results.File(Encoding.UTF8.GetBytes(csv), "text/csv", $"{job.Id}-metrics.csv");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }

    internal static IResult Checkpoint(HttpContext http, string id, string name)
    {
        try
        {
            var caller = Authenticate(http);
            var job = Job(http, caller, id, "download");
            // Only a checkpoint file of the job's own directory, by its plain name.
            if (name != Path.GetFileName(name) || !name.StartsWith("ckpt-", StringComparison.Ordinal) || !name.EndsWith(".dtck", StringComparison.Ordinal))
                throw new Refusal(StatusCodes.Status404NotFound, $"job {id} has no checkpoint \"{name}\"");
            var path = Path.Combine(job.Dir, "checkpoints", name);
            if (!File.Exists(path)) throw new Refusal(StatusCodes.Status404NotFound, $"job {id} has no checkpoint \"{name}\" (older ones are removed per training.keep_checkpoints)");
            Services(http).Audit.Write("job.download", caller, Peer(http), ("job", job.Id), ("owner", job.Owner), ("checkpoint", path), ("via", "dashboard"));
            return Results.File(path, "application/octet-stream", $"{job.Id}-{name}");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }

    internal static async Task<IResult> Sample(HttpContext http, string id)
    {
        try
        {
            var job = Job(http, Authenticate(http), id, "sample");
            if (!TrainingTasks.For(job.Spec).PredictsNextToken) throw new Refusal(StatusCodes.Status404NotFound, $"job {id} is not a language model (task {job.Spec.Task})");
            var checkpoint = job.Progress.Checkpoint;
            if (checkpoint.Length == 0 || !File.Exists(checkpoint)) return Results.Text(new JsonObject { ["text"] = null, ["note"] = "no checkpoint yet" }.ToJsonString(), "application/json");
            var sample = await Services(http).Samples.GetAsync(checkpoint).ConfigureAwait(false);
            return Results.Text(new JsonObject { ["text"] = sample.Text, ["checkpoint"] = Path.GetFileName(checkpoint), ["step"] = sample.Step, ["settings"] = DashboardSamples.Settings }.ToJsonString(), "application/json");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
    }
}
