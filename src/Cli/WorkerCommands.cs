using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Dtrain.Protos.Jobs;
using Grpc.Core;
using Spectre.Console;

namespace Dtrain.Cli;

/// <summary>`dtrain workers`: the membership listing, and an admin's cordon, drain and uncordon (kubectl's verbs).</summary>
public static class WorkerCommands
{
    public static Command Create()
    {
        var cmd = new Command("workers",
            "List the workers known to the coordinator: id (w1, w2, ... handed out by the coordinator), name (--name of `dtrain worker`), address, state, job " +
            "(with auth on: a viewer or admin token). Subcommands cordon, drain and uncordon take a worker out of scheduling and back (admin token).");
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var table = new Table().AddColumns("worker", "name", "address", "state", "job", "phase", "cores", "threads", "device", "last heartbeat", "message");
            var now = DateTimeOffset.UtcNow;
            foreach (var w in client.ListWorkers(new ListWorkersRequest()).Workers)
            {
                // Clocks of the coordinator and this machine may differ slightly: never print "-0.0s ago".
                var ago = Math.Max(0, (now - DateTimeOffset.FromUnixTimeMilliseconds(w.LastHeartbeatUnixMs)).TotalSeconds);
                table.AddRow(Markup.Escape(w.WorkerId), Markup.Escape(w.Name == "" ? "-" : w.Name), Markup.Escape(w.Address), StateName(w) + (w.Stalled ? ", stalled" : ""), Markup.Escape(w.JobId == "" ? "-" : w.JobId),
                    Markup.Escape(w.Activity is { } a && w.State != WorkerState.Lost ? $"{Phase(a)} ({a.InPhaseMs / 1000.0:F0} s)" : "-"),
                    w.Cores.ToString(CultureInfo.InvariantCulture), w.Threads.ToString(CultureInfo.InvariantCulture), Markup.Escape(w.Device), $"{ago:F1}s ago", Markup.Escape(w.Message));
            }
            TableOutput.Console().Write(table);
            return CliErrors.Ok;
        }));
        cmd.Subcommands.Add(Cordon());
        cmd.Subcommands.Add(Drain());
        cmd.Subcommands.Add(Uncordon());
        return cmd;
    }

    /// <summary>"all-reduce reduce-scatter step 1/2 piece 3/8, waiting on w3": a reported phase with its detail.</summary>
    public static string Phase(Dtrain.Protos.Membership.WorkerActivity a) => Distributed.WorkerActivity.Describe(a.Phase, a.Detail, a.WaitingOn);

    /// <summary>The state as listed: "training, cordoned" for a worker that keeps its job but takes no new one.</summary>
    public static string StateName(WorkerInfo w) =>
        w.State.ToString().ToLowerInvariant() + (w.Cordoned && w.State is WorkerState.Training or WorkerState.Joining ? ", cordoned" : "");

    static Argument<string> WorkerArgument() => new("worker") { Description = "The worker's id (w3), or the name it registered with (--name), as `dtrain workers` lists them." };

    static Command Cordon()
    {
        var worker = WorkerArgument();
        var cmd = new Command("cordon", "Take a worker out of scheduling: it takes no new job and keeps the one it has (admin token). `dtrain workers uncordon` undoes it.");
        cmd.Arguments.Add(worker);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var w = client.CordonWorker(new WorkerRequest { Worker = r.GetValue(worker)! });
            Console.WriteLine($"{Describe(w)}: cordoned{(w.JobId == "" ? "" : $"; it keeps {w.JobId} until that job ends")}");
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Drain()
    {
        var worker = WorkerArgument();
        var noWait = new Option<bool>("--no-wait") { Description = "Return at once instead of waiting until the worker has left its job." };
        var timeout = new Option<double>("--timeout")
        {
            Description = "Stop waiting after this many seconds (exit status 1; the drain goes on). Default 0 = wait until it is done.",
            DefaultValueFactory = _ => 0,
        };
        var cmd = new Command("drain",
            "Cordon a worker and take it out of its job at the next step boundary, with no step lost (admin token): an elastic data-parallel job goes on with the " +
            "others (if at least its --min-workers stay; otherwise the drain waits until an idle worker can take its place), a pipeline job fails. The worker " +
            "stays up, cordoned, until `dtrain workers uncordon`. Waits until the worker has left its job.");
        cmd.Arguments.Add(worker);
        cmd.Options.Add(noWait);
        cmd.Options.Add(timeout);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var seconds = r.GetValue(timeout);
            if (seconds < 0) throw new ArgumentException($"--timeout: {seconds.ToString(CultureInfo.InvariantCulture)} must be >= 0 (0 = no limit)");
            var w = client.DrainWorker(new WorkerRequest { Worker = r.GetValue(worker)! });
            if (w.State != WorkerState.Draining)
            {
                Console.WriteLine($"{Describe(w)}: cordoned (it holds no job)");
                return CliErrors.Ok;
            }
            var job = w.JobId;
            Console.WriteLine($"{Describe(w)}: cordoned; leaving {job} at the next step boundary");
            if (r.GetValue(noWait)) return CliErrors.Ok;
            var clock = Stopwatch.StartNew();
            var said = w.Message;
            while (true)
            {
                Thread.Sleep(250);
                var now = client.ListWorkers(new ListWorkersRequest()).Workers.FirstOrDefault(x => x.WorkerId == w.WorkerId);
                if (now is null || now.State == WorkerState.Lost)
                {
                    CliErrors.Error($"{Describe(w)} was {(now is null ? "removed (it shut down)" : "lost")} while draining from {job}");
                    return CliErrors.Failed;
                }
                if (now.State != WorkerState.Draining)
                {
                    Console.WriteLine(now.State == WorkerState.Cordoned
                        ? $"{Describe(w)}: left {job}; cordoned (`dtrain workers uncordon {w.WorkerId}` returns it to idle)"
                        : $"{Describe(w)}: {StateName(now)} - the drain was called off{(now.JobId == "" ? "" : $" and it stays in {now.JobId}")}");
                    return now.State == WorkerState.Cordoned ? CliErrors.Ok : CliErrors.Failed;
                }
                if (now.Message != said && now.Message != "")
                {
                    Console.WriteLine($"{Describe(w)}: {now.Message}");
                    said = now.Message;
                }
                if (seconds > 0 && clock.Elapsed.TotalSeconds > seconds)
                {
                    CliErrors.Error($"{Describe(w)} is still draining from {job} after {seconds.ToString(CultureInfo.InvariantCulture)} s{(now.Message == "" ? "" : $" ({now.Message})")}; the drain goes on (`dtrain workers` shows it)");
                    return CliErrors.Failed;
                }
            }
        }));
        return cmd;
    }

    static Command Uncordon()
    {
        var worker = WorkerArgument();
        var cmd = new Command("uncordon", "Return a cordoned or drained worker to scheduling: idle again, it takes the next job (admin token). A drain not yet carried out is called off.");
        cmd.Arguments.Add(worker);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var w = client.UncordonWorker(new WorkerRequest { Worker = r.GetValue(worker)! });
            Console.WriteLine($"{Describe(w)}: uncordoned, {StateName(w)}{(w.JobId == "" ? "" : $" in {w.JobId}")}");
            return CliErrors.Ok;
        }));
        return cmd;
    }

    /// <summary>"worker w3 (name gpu-a)": the id, and the name when it has one.</summary>
    static string Describe(WorkerInfo w) => $"worker {w.WorkerId}{(w.Name == "" ? "" : $" (name {w.Name})")}";

    /// <summary>
    /// "w1 (name gpu-a), w2": a job's worker ids with their names, for `status` (names only when the token may list
    /// workers — viewers and admins; a submitter sees ids).
    /// </summary>
    public static string Label(Protos.Jobs.Jobs.JobsClient client, IEnumerable<string> ids)
    {
        Dictionary<string, string> names;
        try
        {
            names = client.ListWorkers(new ListWorkersRequest()).Workers.Where(w => w.Name != "").ToDictionary(w => w.WorkerId, w => w.Name);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.PermissionDenied)
        {
            names = [];
        }
        return string.Join(", ", ids.Select(id => names.TryGetValue(id, out var name) ? $"{id} (name {name})" : id));
    }
}
