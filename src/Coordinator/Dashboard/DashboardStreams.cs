using System.Net.ServerSentEvents;
using System.Text.Json.Nodes;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Microsoft.AspNetCore.Http;
using static Dtrain.Dashboard.DashboardAccess;
using static Dtrain.Dashboard.DashboardJson;

namespace Dtrain.Dashboard;

/// <summary>The dashboard's live updates as server-sent events: one job's events, and the jobs and workers lists.</summary>
internal static class DashboardStreams
{
    /// <summary>
    /// Ends a server-sent event stream when the browser goes, the coordinator stops (an open stream must not hold shutdown
    /// up), or the caller's token is revoked (the page then asks to log in again).
    /// </summary>
    internal sealed class StreamEnd : IDisposable
    {
        private readonly CancellationTokenSource cancel;
        private readonly TokenAuthenticator.OpenStream? held;

        public StreamEnd(HttpContext http, Caller caller)
        {
            held = caller.Authenticated ? Services(http).Auth.Hold(caller, $"dashboard {http.Request.Method} {http.Request.Path}", Peer(http)) : null;
            cancel = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted, Services(http).Lifetime.ApplicationStopping, held?.Ended ?? CancellationToken.None);
        }

        public CancellationToken Token => cancel.Token;
        public bool IsCancellationRequested => cancel.IsCancellationRequested;

        public void Dispose()
        {
            cancel.Dispose();
            held?.Dispose();
        }
    }

    internal static StreamEnd StreamCancel(HttpContext http, Caller caller) => new(http, caller);

    /// <summary>
    /// A job's events as server-sent events, from the same source as the Watch RPC: the events so far, then live ones —
    /// "step" (a metrics row), "eval" (a row with validation metrics), "state" (the job as it is now, also when replayed),
    /// "log" (a line) — and "end" when the job has finished.
    /// </summary>
    internal static IResult JobEvents(HttpContext http, string id)
    {
        JobRecord job;
        Caller caller;
        try
        {
            caller = Authenticate(http);
            job = Job(http, caller, id, "watch");
        }
        catch (Refusal r)
        {
            return Error(r);
        }
        http.Response.Headers.CacheControl = "no-store";
        return TypedResults.ServerSentEvents(JobEventStream(http, job, caller));
    }

    internal static async IAsyncEnumerable<SseItem<string>> JobEventStream(HttpContext http, JobRecord job, Caller caller)
    {
        using var cancel = StreamCancel(http, caller);
        var reader = job.Watch();
        var now = Services(http).Clock;
        try
        {
            while (true)
            {
                JobEvent e;
                try
                {
                    if (!await reader.WaitToReadAsync(cancel.Token).ConfigureAwait(false)) break;
                    if (!reader.TryRead(out var notice)) continue;
                    e = job.ToProto(notice);
                }
                catch (OperationCanceledException)
                {
                    yield break;
                }
                yield return e.KindCase switch
                {
                    // The job as it is now, not the snapshot the notice kept: the events so far are replayed first, and
                    // a replayed state (step 0 when the job started) would take the page back behind the detail it just drew.
                    JobEvent.KindOneofCase.State => new SseItem<string>(JobJson(job.ToProto(), now.GetUtcNow()).ToJsonString(), "state"),
                    JobEvent.KindOneofCase.Step or JobEvent.KindOneofCase.Eval => new SseItem<string>(RowJson(MetricsTable.Rows([e])[0]).ToJsonString(), e.KindCase == JobEvent.KindOneofCase.Step ? "step" : "eval"),
                    _ => new SseItem<string>(new JsonObject { ["text"] = e.Log }.ToJsonString(), "log"),
                };
            }
            yield return new SseItem<string>(JobJson(job.ToProto(), now.GetUtcNow()).ToJsonString(), "end");
        }
        finally
        {
            job.Unwatch(reader);
        }
    }

    /// <summary>The jobs list (and the workers, for roles that may list them) as server-sent events whenever they change, checked every second.</summary>
    internal static IResult ClusterStream(HttpContext http)
    {
        Caller caller;
        try
        {
            caller = Authenticate(http);
        }
        catch (Refusal r)
        {
            return Error(r);
        }
        http.Response.Headers.CacheControl = "no-store";
        return TypedResults.ServerSentEvents(ClusterEvents(http, caller));
    }

    internal static async IAsyncEnumerable<SseItem<string>> ClusterEvents(HttpContext http, Caller caller)
    {
        using var cancel = StreamCancel(http, caller);
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        string? lastJobs = null, lastWorkers = null;
        var parts = Services(http);
        while (!cancel.IsCancellationRequested)
        {
            var now = parts.Clock.GetUtcNow();
            var jobs = new JsonArray([.. Visible(http, caller).Select(j => (JsonNode)JobJson(j.ToProto(), now))]).ToJsonString();
            if (jobs != lastJobs) yield return new SseItem<string>(lastJobs = jobs, "jobs");
            if (MayListWorkers(caller))
            {
                var workers = WorkersJson(http).ToJsonString();
                if (workers != lastWorkers) yield return new SseItem<string>(lastWorkers = workers, "workers");
            }
            try
            {
                if (!await timer.WaitForNextTickAsync(cancel.Token).ConfigureAwait(false)) yield break;
            }
            catch (OperationCanceledException)
            {
                yield break;
            }
        }
    }
}
