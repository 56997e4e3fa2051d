using System.Globalization;
using Dtrain.Protos.Jobs;
using Grpc.Core;
using Spectre.Console;

namespace Dtrain.Cli;

/// <summary>Renders a job's event stream: a live progress bar on a terminal, log lines otherwise.</summary>
public static class JobWatcher
{
    public const int Cancelled = 3;

    public static int Watch(Jobs.JobsClient client, string jobId, bool plain)
    {
        using var call = client.Watch(new WatchJobRequest { JobId = jobId });
        JobInfo? last = null;
        if (plain || !AnsiConsole.Profile.Capabilities.Interactive || Console.IsOutputRedirected)
        {
            long every = 1;
            var lastPrint = DateTime.MinValue;
            foreach (var e in Read(call))
            {
                switch (e.KindCase)
                {
                    case JobEvent.KindOneofCase.State:
                        last = e.State;
                        Console.WriteLine($"{e.State.JobId}: {JobCommands.StateName(e.State.State)}{(e.State.Message == "" ? "" : $" - {e.State.Message}")}");
                        if (e.State.TotalSteps > 0) every = Math.Max(1, e.State.TotalSteps / 50);
                        break;
                    case JobEvent.KindOneofCase.Step:
                        var s = e.Step;
                        if (!s.Skipped && s.Step % every != 0 && s.Step != s.TotalSteps && DateTime.UtcNow - lastPrint < TimeSpan.FromSeconds(30)) break;
                        lastPrint = DateTime.UtcNow;
                        Console.WriteLine($"{StepLine(s)} (step {s.StepMs:F0} ms: compute {s.ComputeMs:F0}, all-reduce {s.AllreduceMs:F0}{StageTimes(s)})");
                        break;
                    case JobEvent.KindOneofCase.Eval:
                        Console.WriteLine($"step {e.Eval.Step} validation: {Describe(e.Eval.Metrics)}");
                        break;
                    case JobEvent.KindOneofCase.Log:
                        Console.WriteLine(e.Log);
                        break;
                }
            }
        }
        else
        {
            AnsiConsole.Progress().AutoClear(false)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask($"{jobId}: waiting", maxValue: 1);
                    foreach (var e in Read(call))
                    {
                        switch (e.KindCase)
                        {
                            case JobEvent.KindOneofCase.State:
                                last = e.State;
                                if (e.State.TotalSteps > 0) task.MaxValue = e.State.TotalSteps;
                                task.Description = $"{jobId}: {JobCommands.StateName(e.State.State)}";
                                if (e.State.Message != "") AnsiConsole.MarkupLineInterpolated($"[grey]{jobId}: {JobCommands.StateName(e.State.State)} - {e.State.Message}[/]");
                                break;
                            case JobEvent.KindOneofCase.Step:
                                task.MaxValue = e.Step.TotalSteps;
                                task.Value = e.Step.Step;
                                task.Description = StepLine(e.Step);
                                break;
                            case JobEvent.KindOneofCase.Eval:
                                AnsiConsole.MarkupLineInterpolated($"[green]step {e.Eval.Step}[/] validation: {Describe(e.Eval.Metrics)}");
                                break;
                            case JobEvent.KindOneofCase.Log:
                                AnsiConsole.MarkupLineInterpolated($"[grey]{e.Log}[/]");
                                break;
                        }
                    }
                    if (last?.State == JobState.Succeeded) task.Value = task.MaxValue;
                    task.StopTask();
                });
        }
        // The stream's last state event can precede the final metrics; ask once more for the settled record.
        last = client.Get(new GetJobRequest { JobId = jobId });
        Console.WriteLine($"{jobId}: {JobCommands.StateName(last.State)} after {last.Step} of {last.TotalSteps} steps{(last.Message == "" ? "" : $" - {last.Message}")}");
        if (last.LastEval is { } m) Console.WriteLine($"validation: {Describe(m)}");
        return last.State switch
        {
            JobState.Succeeded => CliErrors.Ok,
            JobState.Cancelled => Cancelled,
            _ => CliErrors.Failed,
        };
    }

    static IEnumerable<JobEvent> Read(AsyncServerStreamingCall<JobEvent> call)
    {
        while (call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult()) yield return call.ResponseStream.Current;
    }

    static string StepLine(StepEvent s) =>
        $"step {s.Step}/{s.TotalSteps} epoch {s.Epoch + 1} loss {s.Loss:F4}{(s.Skipped ? $" (skipped: non-finite {s.Nonfinite})" : "")} lr {s.Lr:G3} {s.SamplesPerSecond:F1} samples/s workers {s.Workers} " +
        $"elapsed {TimeSpan.FromSeconds(s.ElapsedSeconds):hh\\:mm\\:ss} eta {TimeSpan.FromSeconds(s.EtaSeconds):hh\\:mm\\:ss}";

    public static string Describe(Metrics m)
    {
        var parts = new List<string> { $"loss {m.Loss.ToString("F4", CultureInfo.InvariantCulture)}" };
        if (m.HasAccuracy) parts.Add($"accuracy {(m.Accuracy * 100).ToString("F2", CultureInfo.InvariantCulture)}%");
        if (m.HasMacroF1) parts.Add($"macro-F1 {m.MacroF1.ToString("F4", CultureInfo.InvariantCulture)}");
        if (m.HasPerplexity) parts.Add($"perplexity {m.Perplexity.ToString("F2", CultureInfo.InvariantCulture)}");
        if (m.HasBitsPerToken) parts.Add($"bits/token {m.BitsPerToken.ToString("F3", CultureInfo.InvariantCulture)}");
        return string.Join(", ", parts);
    }

    /// <summary>Pipeline jobs: each stage's compute time and the share of the step the stages waited for each other.</summary>
    static string StageTimes(StepEvent s) => s.StageComputeMs.Count == 0 ? ""
        : $"; stages {string.Join("/", s.StageComputeMs.Select(ms => ms.ToString("F0", System.Globalization.CultureInfo.InvariantCulture)))} ms, bubble {s.Bubble:P0}";
}
