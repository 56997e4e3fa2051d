using System.CommandLine;
using System.Globalization;
using Dtrain.Protos.Jobs;
using Dtrain.Rpc;
using Dtrain.Specs;
using Grpc.Core;
using Spectre.Console;

namespace Dtrain.Cli;

/// <summary>The job verbs against a coordinator: submit, watch, status, list, cancel, workers, download, metrics.</summary>
public static class JobCommands
{
    public static IEnumerable<Command> Create()
    {
        yield return Submit();
        yield return Resume();
        yield return Watch();
        yield return Status();
        yield return List();
        yield return Cancel();
        yield return Workers();
        yield return Download();
        yield return MetricsCommand.Create();
    }

    static Command Submit()
    {
        var spec = new Argument<FileInfo>("spec") { Description = "Job spec (JSON); its data files are uploaded with it." };
        var workers = new Option<int>("--workers", "-w") { Description = "Number of workers (0 = all idle workers when the job starts; a pipeline job with parallelism.data D runs on exactly D × K).", DefaultValueFactory = _ => 0 };
        var watch = new Option<bool>("--watch") { Description = "Follow the job's progress until it ends (exit status 0 = succeeded)." };
        var plain = new Option<bool>("--plain") { Description = "With --watch: log lines instead of a progress bar." };
        var resume = new Option<string?>("--resume")
        {
            Description = "Start from a checkpoint instead of the seed: a job id (its newest checkpoint on the coordinator) or a local .dtck file or run directory (uploaded). " +
                "The model and optimizer must match the spec's; parallelism (--workers, parallelism.data, parallelism.pipeline) may differ.",
        };
        var minWorkers = new Option<int>("--min-workers")
        {
            Description = "Data-parallel jobs are elastic: they go on without workers that die, hang or leave while at least this many remain (default 1), and wait (state \"waiting\") for more below it.",
        };
        var maxWorkers = new Option<int>("--max-workers")
        {
            Description = "Idle workers join a running data-parallel job at a step boundary while it has fewer than this (default: the number it started with).",
        };
        var coordinatorData = new Option<bool>("--coordinator-data") { Description = "Upload nothing: data.train / data.validation are absolute paths of files on the coordinator, under a directory its operator allowed (`dtrain serve --data-root DIR`)." };
        var cmd = new Command("submit", "Submit a job spec to the coordinator's queue; prints the job id.");
        cmd.Arguments.Add(spec);
        foreach (var o in new Option[] { workers, minWorkers, maxWorkers, resume, watch, plain, coordinatorData }) cmd.Options.Add(o);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var request = BuildSubmit(client, r.GetValue(spec)!, r.GetValue(workers), upload: !r.GetValue(coordinatorData));
            if (r.GetValue(resume) is { } from) AddResume(client, request, from);
            request.MinWorkers = r.GetValue(minWorkers);
            request.MaxWorkers = r.GetValue(maxWorkers);
            var id = client.Submit(request).JobId;
            Console.WriteLine(id);
            return r.GetValue(watch) ? JobWatcher.Watch(client, id, r.GetValue(plain)) : CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Resume()
    {
        var id = new Argument<string>("job") { Description = "The failed, cancelled or finished job to continue (see `dtrain list`)." };
        var workers = new Option<int?>("--workers", "-w") { Description = "Number of workers (default: as many as the job asked for)." };
        var watch = new Option<bool>("--watch") { Description = "Follow the new job's progress until it ends (exit status 0 = succeeded)." };
        var plain = new Option<bool>("--plain") { Description = "With --watch: log lines instead of a progress bar." };
        var cmd = new Command("resume", "Continue a job from its newest checkpoint as a new job with the same spec and data (no upload); prints the new job id. " +
            "To change the spec or the parallelism, use `dtrain submit SPEC --resume JOB`.");
        cmd.Arguments.Add(id);
        foreach (var o in new Option[] { workers, watch, plain }) cmd.Options.Add(o);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var job = r.GetValue(id)!;
            var count = r.GetValue(workers) ?? WorkersOf(client, job);
            var newId = client.Submit(new SubmitRequest { ResumeJob = job, Workers = count, Source = $"spec of {job}" }).JobId;
            Console.WriteLine(newId);
            return r.GetValue(watch) ? JobWatcher.Watch(client, newId, r.GetValue(plain)) : CliErrors.Ok;
        }));
        return cmd;
    }

    /// <summary>How many workers a job asked for; 0 (all idle) for a job the coordinator only knows from its disk (after a restart).</summary>
    private static int WorkersOf(Jobs.JobsClient client, string job)
    {
        try
        {
            return client.Get(new GetJobRequest { JobId = job }).WorkersRequested;
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            return 0;
        }
    }

    /// <summary>
    /// `--resume FROM`: a local checkpoint file or run directory is uploaded (the coordinator needs no shared
    /// filesystem); anything else names a job on the coordinator.
    /// </summary>
    public static void AddResume(Jobs.JobsClient client, SubmitRequest request, string from)
    {
        string? file = null;
        if (File.Exists(from)) file = from;
        else if (Directory.Exists(from))
        {
            var latest = Checkpoints.RunDirectory.LoadLatest(from)
                ?? throw new FileNotFoundException("--resume: " + Checkpoints.RunDirectory.NothingIn(from));
            foreach (var s in latest.Skipped) Console.Error.WriteLine($"warning: skipping corrupt checkpoint {s.Path}: {s.Reason}");
            file = latest.Path;
        }
        if (file is not null)
        {
            // Check it here first: a precise message, and no upload of a file the coordinator would refuse.
            Checkpoints.CheckpointStore.ReadFile(file);
            request.ResumeUpload = Upload(client, file);
        }
        else if (from.StartsWith("job-", StringComparison.Ordinal)) request.ResumeJob = from;
        else throw new FileNotFoundException($"--resume {from}: neither a checkpoint file, a run directory nor a job id (job-NNNN)");
    }

    /// <summary>
    /// Validates the spec locally (fast, precise errors) and uploads its data files in chunks (unless <paramref name="upload"/>
    /// is false: then they name files on the coordinator). The spec's directory goes with it: the job's checkpoints name
    /// the data by its full path here, as `train` records it, so `dtrain eval MODEL` on this machine finds the data, and
    /// elsewhere says which file it needs.
    /// </summary>
    public static SubmitRequest BuildSubmit(Jobs.JobsClient client, FileInfo file, int workers, bool upload = true)
    {
        var parsed = JobSpecSerializer.Load(file.FullName);
        var request = new SubmitRequest { SpecJson = File.ReadAllText(file.FullName), Workers = workers, Source = file.Name, SpecDir = file.DirectoryName! };
        foreach (var (path, field) in new[] { (parsed.Data.Train, "train"), (parsed.Data.Validation, "validation") })
        {
            if (path is null || parsed.Data.Format == DataFormats.Synthetic) continue;
            if (!upload)
            {
                if (!Path.IsPathRooted(path)) throw new SpecException(file.Name, [new SpecError($"$.data.{field}", $"\"{path}\" must be an absolute path on the coordinator with --coordinator-data")]);
                continue;
            }
            var full = JobSpecPaths.Resolve(file.DirectoryName!, path)!;
            if (!File.Exists(full)) throw new SpecException(file.Name, [new SpecError($"$.data.{field}", $"file not found: {full}")]);
            request.UploadedFiles[path] = Upload(client, full);
        }
        return request;
    }

    /// <summary>Streams a file to the coordinator in 512 KiB chunks (<see cref="FileUpload"/>); returns its upload handle.</summary>
    public static string Upload(Jobs.JobsClient client, string path) => FileUpload.Send(client, path);

    static Command Watch()
    {
        var id = new Argument<string>("job") { Description = "Job id (see `dtrain list`)." };
        var plain = new Option<bool>("--plain") { Description = "Log lines instead of a progress bar." };
        var cmd = new Command("watch", "Follow a job: live progress (epoch, step, loss, samples/s, ETA, workers) until it ends; reconnects (with backoff, up to 15 minutes) while the coordinator is unreachable or restarting; exit status 0 = succeeded, 1 = failed, 3 = cancelled.");
        cmd.Arguments.Add(id);
        cmd.Options.Add(plain);
        cmd.SetAction(r => Remote.Guard(r, client => JobWatcher.Watch(client, r.GetValue(id)!, r.GetValue(plain))));
        return cmd;
    }

    static Command Status()
    {
        var id = new Argument<string>("job") { Description = "Job id." };
        var ledger = new Option<bool>("--ledger") { Description = "Also show the sample ledger: which rows of every epoch each committed step trained, on which workers, and whether every sample was seen exactly once." };
        var cmd = new Command("status", "Show one job: state, owner, step, loss, last evaluation, workers, checkpoint.");
        cmd.Arguments.Add(id);
        cmd.Options.Add(ledger);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var j = client.Get(new GetJobRequest { JobId = r.GetValue(id)! });
            Console.WriteLine($"{j.JobId} {j.Name} ({j.Task}): {StateName(j.State)}{(j.Message == "" ? "" : $" - {j.Message}")}");
            Console.WriteLine($"  owner: {Owner(j)}");
            Console.WriteLine($"  step {j.Step}/{j.TotalSteps}, epoch {j.Epoch + 1}, loss {j.Loss:F4}, {j.SamplesPerSecond:F1} samples/s, {j.Parameters:N0} parameters");
            if (j.LastEval is { } m) Console.WriteLine($"  validation: {JobWatcher.Describe(m)}");
            Console.WriteLine($"  workers: {(j.WorkerIds.Count == 0 ? "-" : WorkerCommands.Label(client, j.WorkerIds))} (requested {(j.WorkersRequested == 0 ? "all idle" : j.WorkersRequested.ToString(CultureInfo.InvariantCulture))})");
            if (j.Generation > 1 || j.MaxWorkers > 0)
                Console.WriteLine($"  membership generation {j.Generation}, workers min {j.MinWorkers} max {j.MaxWorkers}{(j.Restarts > 0 ? $", {j.Restarts} restart(s)" : "")}");
            if (j.ResumedFrom != "") Console.WriteLine($"  resumed from {j.ResumedFrom} at step {j.StartStep}");
            if (j.Checkpoint != "") Console.WriteLine($"  checkpoint: {j.Checkpoint} (`dtrain download {j.JobId}` fetches it)");
            if (j.Stall != "") Console.WriteLine($"  STALL: {j.Stall}");
            if (j.WorkerRows.Count > 0) WorkerRows(j);
            if (r.GetValue(ledger)) LedgerView.Print(client.Ledger(new GetJobRequest { JobId = j.JobId }), j);
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command List()
    {
        var cmd = new Command("list", "List the coordinator's jobs (a submitter token sees only its own) with their owner.");
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var table = new Table().AddColumns("job", "owner", "name", "task", "state", "step", "loss", "workers", "stored", "message");
            // Ids, states and steps never wrap (scripts grep for them); redirected output is not squeezed to 80 columns.
            foreach (var c in table.Columns.Take(9)) c.NoWrap();
            if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 200);
            var reply = client.List(new ListJobsRequest());
            foreach (var j in reply.Jobs)
                table.AddRow(Markup.Escape(j.JobId), Markup.Escape(Owner(j)), Markup.Escape(j.Name), j.Task, StateName(j.State), $"{j.Step}/{j.TotalSteps}", j.Step > 0 ? j.Loss.ToString("F4", CultureInfo.InvariantCulture) : "-",
                    j.WorkerIds.Count.ToString(CultureInfo.InvariantCulture), ShortBytes(j.StoredBytes), Markup.Escape(j.Message));
            TableOutput.Console().Write(table);
            foreach (var s in reply.Storage)
                Console.WriteLine(StorageLine(s));
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Cancel()
    {
        var id = new Argument<string>("job") { Description = "Job id." };
        var cmd = new Command("cancel", "Cancel a queued or running job; its workers return to idle.");
        cmd.Arguments.Add(id);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var j = client.Cancel(new CancelJobRequest { JobId = r.GetValue(id)! });
            Console.WriteLine(j.State switch
            {
                // A running, preparing or waiting job stops at its next step boundary (or at once, if it waits).
                JobState.Running or JobState.Preparing or JobState.Waiting => $"{j.JobId}: cancelling",
                JobState.Cancelled => $"{j.JobId}: cancelled",
                // Nothing to cancel: it had ended.
                _ => $"{j.JobId}: already {StateName(j.State)}, nothing to cancel",
            });
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Workers() => WorkerCommands.Create();

    static Command Download()
    {
        var id = new Argument<string>("job") { Description = "Job id." };
        var output = new Option<FileInfo>("--output", "-o") { Description = "Where to write the checkpoint (default: JOB.dtck).", };
        var cmd = new Command("download", "Download a job's newest checkpoint (its final model once it succeeded); use it with generate / predict / eval.");
        cmd.Arguments.Add(id);
        cmd.Options.Add(output);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var job = r.GetValue(id)!;
            var target = CliPaths.FileToWrite(r.GetValue(output)?.FullName ?? $"{job}.dtck", r.GetValue(output) is null ? $"the default output {job}.dtck" : "--output", $"{job}.dtck");
            return DownloadTo(client, job, target);
        }));
        return cmd;
    }

    /// <summary>
    /// Streams the job's newest checkpoint into TARGET.part, verifies it and only then moves it to <paramref name="target"/>:
    /// a refused or broken download (no such job, no permission, no checkpoint yet, a cut connection, a damaged file)
    /// leaves nothing behind, and an earlier file at <paramref name="target"/> stays as it was.
    /// </summary>
    public static int DownloadTo(Jobs.JobsClient client, string job, string target)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        var tmp = target + ".part";
        long total = 0;
        try
        {
            using (var call = client.Download(new DownloadRequest { JobId = job }))
            {
                FileStream? file = null;
                try
                {
                    while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
                    {
                        // Created with the first chunk: a refused call creates no file at all.
                        file ??= File.Create(tmp);
                        call.ResponseStream.Current.Data.WriteTo(file);
                        total += call.ResponseStream.Current.Data.Length;
                    }
                    if (file is null) throw new InvalidDataException($"{job}: the coordinator sent an empty checkpoint; nothing was written to {target}");
                    file.Flush(flushToDisk: true);
                }
                finally
                {
                    file?.Dispose();
                }
            }
            // Verify what arrived before it takes the target's place and the user is told it is there.
            try
            {
                Checkpoints.CheckpointStore.ReadFile(tmp);
            }
            catch (Checkpoints.CorruptCheckpointException e)
            {
                throw new InvalidDataException($"{job}: the downloaded checkpoint is damaged ({e.Reason}); nothing was written to {target}", e);
            }
            File.Move(tmp, target, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
        Console.WriteLine($"{target} ({total:N0} bytes)");
        return CliErrors.Ok;
    }

    /// <summary>A row per worker of a running job: step, phase (with detail), time in phase, heartbeat age; laggards marked.</summary>
    private static void WorkerRows(JobInfo j)
    {
        var table = new Table().AddColumns("worker", "step", "phase", "in phase", "last heartbeat", "state");
        foreach (var c in table.Columns.Where((_, i) => i != 2)) c.NoWrap();
        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 200);
        foreach (var w in j.WorkerRows)
        {
            var a = w.Activity;
            table.AddRow(Markup.Escape((w.Stalled ? "! " : "") + (w.Name == "" ? w.WorkerId : $"{w.WorkerId} {w.Name}")),
                a is { Step: > 0 } ? a.Step.ToString(CultureInfo.InvariantCulture) : "-",
                Markup.Escape(a is null ? "-" : WorkerCommands.Phase(a)),
                a is null ? "-" : Seconds(a.InPhaseMs),
                Seconds(w.HeartbeatAgeMs) + " ago",
                WorkerCommands.StateName(w) + (w.Stalled ? ", stalled" : ""));
        }
        TableOutput.Console().Write(table);
    }

    private static string Seconds(long ms) => (ms / 1000.0).ToString("F1", CultureInfo.InvariantCulture) + " s";

    public static string StateName(JobState s) => s.ToString().ToLowerInvariant();

    /// <summary>The token name that submitted a job; "-" when the coordinator's auth was off.</summary>
    static string Owner(JobInfo j) => j.Owner == "" ? "-" : j.Owner;

    /// <summary>"1.5 MB": a job's storage in the list.</summary>
    static string ShortBytes(long n)
    {
        if (n < 1000) return n.ToString(CultureInfo.InvariantCulture) + " B";
        string[] units = ["kB", "MB", "GB", "TB", "PB"];
        double v = n;
        var u = -1;
        while (v >= 1000 && u < units.Length - 1) { v /= 1000; u++; }
        return $"{v.ToString("0.#", CultureInfo.InvariantCulture)} {units[u]}";
    }

    /// <summary>"storage of alice: 1.5 MB of 10 GB (Coordinator:MaxStoredBytesPerOwner)", under the job list.</summary>
    public static string StorageLine(OwnerStorage s)
    {
        var who = s.Owner == "" ? "storage" : $"storage of {s.Owner}";
        return s.QuotaBytes > 0
            ? $"{who}: {ShortBytes(s.StoredBytes)} of {ShortBytes(s.QuotaBytes)} ({Math.Min(999, 100.0 * s.StoredBytes / s.QuotaBytes).ToString("0", CultureInfo.InvariantCulture)}%, Coordinator:MaxStoredBytesPerOwner)"
            : $"{who}: {ShortBytes(s.StoredBytes)} (no quota: Coordinator:MaxStoredBytesPerOwner is 0)";
    }
}
