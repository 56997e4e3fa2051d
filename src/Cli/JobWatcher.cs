using System.Globalization;
using Dtrain.Protos.Jobs;
using Grpc.Core;
using Spectre.Console;

namespace Dtrain.Cli;

/// <summary>Renders a job's event stream: a live progress bar on a terminal, log lines otherwise.</summary>
public static class JobWatcher
{
    public const int Cancelled = 3;

    /// <summary>How long `watch` keeps reconnecting to a coordinator it cannot reach before it gives up (exit 1).</summary>
    public static readonly TimeSpan GiveUpAfter = TimeSpan.FromMinutes(15);

    /// <summary>
    /// Follows a job until it ends. With <paramref name="detachOnCtrlC"/> (watch, submit --watch, resume --watch), Ctrl-C
    /// stops watching and leaves the job running, saying so (exit 130); `cluster run` handles Ctrl-C itself (it cancels the job).
    /// </summary>
    public static int Watch(Jobs.JobsClient client, string jobId, bool plain, bool detachOnCtrlC = true)
    {
        ConsoleCancelEventHandler? detach = null;
        if (detachOnCtrlC)
        {
            detach = (_, e) =>
            {
                // The bar hides the cursor until it ends: show it again, and say what became of the job.
                if (!Console.IsOutputRedirected) Console.Write("\u001b[?25h");
                Console.Error.WriteLine($"{Environment.NewLine}stopped watching {jobId}; it keeps running: `dtrain watch {jobId}` follows it again, `dtrain cancel {jobId}` stops it");
                e.Cancel = false;
            };
            Console.CancelKeyPress += detach;
        }
        try
        {
            return WatchCore(client, jobId, plain);
        }
        finally
        {
            if (detach is not null) Console.CancelKeyPress -= detach;
        }
    }

    static int WatchCore(Jobs.JobsClient client, string jobId, bool plain)
    {
        var call = new Reconnecting(client, jobId);
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
                .Columns(ConsoleProgress.BarColumns())
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
                                task.Description = ConsoleProgress.BarText($"step {e.Step.Step}/{e.Step.TotalSteps} loss {e.Step.Loss:F4}{(e.Step.Skipped ? " (skipped)" : "")} " +
                                    $"{e.Step.SamplesPerSecond:F0} samples/s workers {e.Step.Workers} lr {e.Step.Lr:G3} epoch {e.Step.Epoch + 1}");
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
        last = call.Retry(() => client.Get(new GetJobRequest { JobId = jobId }));
        Console.WriteLine($"{jobId}: {JobCommands.StateName(last.State)} after {last.Step} of {last.TotalSteps} steps{(last.Message == "" ? "" : $" - {last.Message}")}");
        if (last.LastEval is { } m) Console.WriteLine($"validation: {Describe(m)}");
        return last.State switch
        {
            JobState.Succeeded => CliErrors.Ok,
            JobState.Cancelled => Cancelled,
            _ => CliErrors.Failed,
        };
    }

    static IEnumerable<JobEvent> Read(Reconnecting call) => call.Events();

    /// <summary>
    /// The job's events across coordinator restarts: when the stream breaks (or ends before the job has) the watch
    /// says so on stderr, reconnects with backoff (0.5 s doubling to 10 s) and subscribes again — the coordinator
    /// replays the job's state and last progress, then live events — until the job ends, or gives up after
    /// <see cref="GiveUpAfter"/> without reaching the coordinator.
    /// </summary>
    sealed class Reconnecting(Jobs.JobsClient client, string jobId)
    {
        private DateTime? lostSince;
        private TimeSpan delay = TimeSpan.FromMilliseconds(500);

        static bool Transient(StatusCode code) => code is StatusCode.Unavailable or StatusCode.Internal or StatusCode.Unknown or StatusCode.Cancelled
            or StatusCode.DeadlineExceeded or StatusCode.Aborted;

        public IEnumerable<JobEvent> Events()
        {
            while (true)
            {
                var finished = false;
                RpcException? broken = null;
                using (var call = client.Watch(new WatchJobRequest { JobId = jobId }))
                {
                    while (true)
                    {
                        (var e, broken) = Next(call);
                        if (e is null) break;
                        Reached();
                        if (e.KindCase == JobEvent.KindOneofCase.State)
                            finished = e.State.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled;
                        yield return e;
                    }
                }
                if (finished) yield break;
                Lost(broken?.Status.Detail ?? "the event stream ended before the job did", broken);
            }
        }

        /// <summary>The next event; null at the end of the stream or when it broke in a way a reconnect may mend.</summary>
        static (JobEvent? Event, RpcException? Broken) Next(AsyncServerStreamingCall<JobEvent> call)
        {
            try
            {
                return call.ResponseStream.MoveNext(CancellationToken.None).GetAwaiter().GetResult() ? (call.ResponseStream.Current, null) : (null, null);
            }
            catch (RpcException e) when (Transient(e.StatusCode))
            {
                return (null, e);
            }
        }

        public T Retry<T>(Func<T> call)
        {
            while (true)
            {
                try
                {
                    var result = call();
                    Reached();
                    return result;
                }
                catch (RpcException e) when (Transient(e.StatusCode))
                {
                    Lost(e.Status.Detail, e);
                }
            }
        }

        private void Reached()
        {
            if (lostSince is null) return;
            Console.Error.WriteLine($"{jobId}: coordinator reachable again; watching");
            lostSince = null;
            delay = TimeSpan.FromMilliseconds(500);
        }

        private void Lost(string why, RpcException? error)
        {
            lostSince ??= DateTime.UtcNow;
            if (DateTime.UtcNow - lostSince > GiveUpAfter)
                throw error ?? new RpcException(new Grpc.Core.Status(StatusCode.Unavailable, $"coordinator unreachable for {GiveUpAfter.TotalMinutes:F0} minutes while watching {jobId}: {why}"));
            Console.Error.WriteLine($"{jobId}: coordinator unreachable ({why}), reconnecting in {delay.TotalSeconds:F1} s...");
            Thread.Sleep(delay);
            delay = TimeSpan.FromMilliseconds(Math.Min(10_000, delay.TotalMilliseconds * 2));
        }
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
