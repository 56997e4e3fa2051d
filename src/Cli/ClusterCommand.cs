using System.CommandLine;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;

namespace Dtrain.Cli;

/// <summary>`dtrain cluster up|run`: a coordinator and N workers on this machine, for trying things and for tests.</summary>
public static class ClusterCommand
{
    public static Command Create()
    {
        var cmd = new Command("cluster", "Run a local cluster (a coordinator and workers on loopback) on this machine.");
        cmd.Subcommands.Add(Up());
        cmd.Subcommands.Add(Run());
        return cmd;
    }

    static (Option<int> Workers, Option<int> Port, Option<int?> Threads, Option<string> Logs) CommonOptions(int defaultPort) => (
        new Option<int>("--workers", "-w") { Description = $"Number of workers, {LocalCluster.MinWorkers} to {LocalCluster.MaxWorkers}.", DefaultValueFactory = _ => 2 },
        new Option<int>("--port", "-p") { Description = "Coordinator port (0 = any free port); a port something already listens on is refused.", DefaultValueFactory = _ => defaultPort },
        new Option<int?>("--threads") { Description = $"Torch threads per worker, {LocalCluster.MinThreads} to {LocalCluster.MaxThreads} (default: cores / workers, at least 1)." },
        new Option<string>("--logs") { Description = "Directory for the processes' logs and the coordinator's data.", DefaultValueFactory = _ => ".dtrain/cluster" });

    /// <summary>The threads per worker, after <see cref="LocalCluster.CheckOptions"/> has refused a bad --workers, --threads or --port (exit 2, before anything starts).</summary>
    static int Checked(int workers, int port, int? threads)
    {
        LocalCluster.CheckOptions(workers, port, threads);
        return threads ?? Math.Max(1, Environment.ProcessorCount / workers);
    }

    static Command Up()
    {
        var (workers, port, threads, logs) = CommonOptions(5000);
        var dataRoots = new Option<string[]>("--data-root")
        {
            Description = "A directory the coordinator's jobs may name data in by absolute path — prepared datasets (data.dataset) and files — as `dtrain serve --data-root` (repeatable; default none). The local workers see it at the same path.",
        };
        var cmd = new Command("up", "Start a coordinator and workers and keep them running until Ctrl-C; submit jobs from another terminal with --coordinator.");
        foreach (var o in new Option[] { workers, port, threads, logs, dataRoots }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var n = r.GetValue(workers);
            var perWorker = Checked(n, r.GetValue(port), r.GetValue(threads));
            var logDir = LogDir(r.GetValue(logs)!);
            var roots = (r.GetValue(dataRoots) ?? []).Select(DataRoot).ToList();
            using var cluster = LocalCluster.Start(n, r.GetValue(port), perWorker, logDir, TimeSpan.FromMinutes(2), dataRoots: roots.Count > 0 ? roots : null);
            Console.WriteLine($"cluster up: coordinator {cluster.Address}, {n} worker(s), logs in {cluster.LogDir}");
            if (roots.Count > 0) Console.WriteLine($"  data roots: {string.Join(", ", roots)}");
            if (cluster.DashboardUrl is { } web) Console.WriteLine($"  dashboard: {web}");
            Console.WriteLine($"  export DTRAIN_COORDINATOR={cluster.Address}; ./dtrain submit examples/quickstart.json --watch");
            Console.WriteLine("press Ctrl-C to stop");
            using var stop = new ManualResetEventSlim();
            Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Set(); };
            stop.Wait();
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Run()
    {
        var (workers, port, threads, logs) = CommonOptions(0);
        var spec = new Argument<FileInfo>("spec") { Description = "Job spec to train." };
        var output = new Option<FileInfo?>("--output", "-o") { Description = "Where to save the final model (default: OUTPUT/model.dtck, OUTPUT being the spec's \"output\", else runs/NAME)." };
        var plain = new Option<bool>("--plain") { Description = "Log lines instead of a progress bar." };
        var cmd = new Command("run", "Start a local cluster, train one job on it with live progress, download the model and stop the cluster.");
        cmd.Arguments.Add(spec);
        foreach (var o in new Option[] { workers, port, threads, logs, output, plain }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var file = r.GetValue(spec)!;
            var n = r.GetValue(workers);
            var perWorker = Checked(n, r.GetValue(port), r.GetValue(threads));
            var logDir = LogDir(r.GetValue(logs)!);
            var job = JobSpecSerializer.Load(file.FullName);
            // What the coordinator would refuse is refused before anything starts (a pipeline's worker count), and
            // anything else it refuses at submit is bad input too (exit 2), as for `dtrain submit`.
            JobSpecValidator.PipelineWorkers(job, n, file.Name);
            // Like `dtrain train`: the spec's "output" (relative to the spec file), else runs/NAME, is the run directory.
            var runDir = r.GetValue(output) is null ? JobSpecPaths.OutputDir(job, file.DirectoryName!) : null;
            var target = r.GetValue(output)?.FullName ?? Path.Combine(runDir!, Checkpoints.RunDirectory.ModelFile);
            CheckModelTarget(target, r.GetValue(output) is not null ? "--output" : job.Output is null ? "the default output runs/NAME/model.dtck" : "$.output");
            var dataset = LocalDataset(job, file);
            Console.WriteLine($"starting a local cluster: coordinator + {n} worker(s)...");
            using var cluster = LocalCluster.Start(n, r.GetValue(port), perWorker, logDir, TimeSpan.FromMinutes(2), dataRoots: dataset is null ? null : [dataset]);
            using var channel = Remote.Channel(cluster.Address);
            var client = new Jobs.JobsClient(channel);
            string id;
            try
            {
                var request = JobCommands.BuildSubmit(client, file, r.GetValue(workers));
                if (dataset is not null) request.SpecJson = JobSpecSerializer.Serialize(job with { Data = job.Data with { Dataset = dataset } });
                id = client.Submit(request).JobId;
            }
            catch (Grpc.Core.RpcException e) when (e.StatusCode is Grpc.Core.StatusCode.InvalidArgument or Grpc.Core.StatusCode.FailedPrecondition)
            {
                throw new ArgumentException(e.Status.Detail, e);
            }
            Console.WriteLine($"{id} submitted to {cluster.Address} (logs in {cluster.LogDir})");
            if (cluster.DashboardUrl is { } web) Console.WriteLine($"dashboard: {web}jobs/{id}");
            using var cancel = new CancelOnCtrlC(client, id);
            var status = JobWatcher.Watch(client, id, r.GetValue(plain), detachOnCtrlC: false);
            if (status != CliErrors.Ok) return status;
            // A new run's model: an earlier run's files in the run directory (local checkpoints, model.dtck) are kept,
            // moved aside, so that the directory stands for this run's model only.
            if (runDir is not null && Checkpoints.RunDirectory.MoveEarlierRunAside(runDir, DateTime.UtcNow) is { } earlier)
                Console.WriteLine($"{runDir} held an earlier run's model or checkpoints; moved them to {earlier}");
            return JobCommands.DownloadTo(client, id, target);
        }));
        return cmd;
    }

    /// <summary>
    /// A spec's dataset in a local directory (data.dataset, relative to the spec file as for `dtrain train`): its real
    /// absolute path, which the local coordinator is given as its data root and the job names (the local workers see the
    /// same path); null for none or s3://. A directory that does not exist is refused before anything starts.
    /// </summary>
    static string? LocalDataset(JobSpec job, FileInfo file)
    {
        if (job.Data.Dataset is not { } dataset || Dtrain.Data.Storage.S3Location.IsS3(dataset)) return null;
        var full = JobSpecPaths.Resolve(file.DirectoryName!, dataset)!;
        return Directory.Exists(full) && Dtrain.Data.DataFile.RealPath(full) is { } real ? real
            : throw new SpecException(file.Name, [new SpecError("$.data.dataset", $"\"{dataset}\": no such directory ({full})")]);
    }

    /// <summary>A --data-root of `cluster up`: its real absolute path; one that is not a directory is refused before anything starts (exit 2).</summary>
    static string DataRoot(string root)
    {
        var full = Path.GetFullPath(root);
        return Directory.Exists(full) && Dtrain.Data.DataFile.RealPath(full) is { } real ? real
            : throw new ArgumentException($"--data-root {root}: no such directory ({full})");
    }

    /// <summary>Refuses, before any training, a model file that could not be written at the end: a directory, or under a file.</summary>
    static void CheckModelTarget(string target, string setting) => CliPaths.FileToWrite(target, setting, "model.dtck");

    /// <summary>Refuses, before anything starts, a --logs that is a file (or under one).</summary>
    static string LogDir(string logs) => CliPaths.DirectoryToUse(logs, "--logs", "the directory for the processes' logs and the coordinator's data");

    /// <summary>Ctrl-C cancels the job (the watcher then sees it end) instead of killing the CLI mid-stream.</summary>
    sealed class CancelOnCtrlC : IDisposable
    {
        private readonly ConsoleCancelEventHandler handler;

        public CancelOnCtrlC(Jobs.JobsClient client, string id)
        {
            handler = (_, e) =>
            {
                e.Cancel = true;
                Console.Error.WriteLine($"interrupt: cancelling {id}");
                try { client.Cancel(new CancelJobRequest { JobId = id }); } catch (Grpc.Core.RpcException) { }
            };
            Console.CancelKeyPress += handler;
        }

        public void Dispose() => Console.CancelKeyPress -= handler;
    }
}
