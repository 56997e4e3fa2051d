using System.CommandLine;
using System.Text;
using Dtrain.Protos.Jobs;
using Dtrain.Server;

namespace Dtrain.Cli;

/// <summary>`dtrain metrics JOB`: a job's step and evaluation history, kept by the coordinator, as CSV or JSON lines.</summary>
public static class MetricsCommand
{
    public static Command Create()
    {
        var id = new Argument<string>("job") { Description = "Job id (running or finished; also a job of an earlier coordinator run)." };
        var format = new Option<string>("--format", "-f") { Description = "csv (a header line, one row per step) or jsonl (one JSON object per step).", DefaultValueFactory = _ => "csv" };
        format.AcceptOnlyFromAmong("csv", "jsonl");
        var output = new Option<FileInfo?>("--output", "-o") { Description = "Write to this file instead of standard output." };
        var cmd = new Command("metrics",
            "Export a job's step and evaluation events: step, epoch, loss, lr, samples/s, step/compute/all-reduce/waiting ms, grad norm, validation metrics, pipeline bubble " +
            "(columns in docs/cluster.md#metrics-history).");
        cmd.Arguments.Add(id);
        cmd.Options.Add(format);
        cmd.Options.Add(output);
        cmd.SetAction(r => Remote.Guard(r, client =>
        {
            var target = r.GetValue(output) is { } file ? CliPaths.FileToWrite(file.FullName, "--output", $"{r.GetValue(id)}.{r.GetValue(format)}") : null;
            var history = client.History(new GetJobRequest { JobId = r.GetValue(id)! });
            var rows = MetricsTable.Rows(history.Events);
            if (target is not null) Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            using (var stream = target is null ? Console.OpenStandardOutput() : File.Create(target))
            {
                if (r.GetValue(format) == "jsonl") MetricsTable.WriteJsonLines(rows, stream);
                else
                {
                    using var text = new StreamWriter(stream, new UTF8Encoding(false), leaveOpen: true);
                    MetricsTable.WriteCsv(rows, text);
                }
            }
            if (target is not null) Console.Error.WriteLine($"{target}: {rows.Count} rows of job {history.Job.JobId} ({JobCommands.StateName(history.Job.State)})");
            return CliErrors.Ok;
        }));
        return cmd;
    }
}
