using Dtrain.Training;
using Spectre.Console;
using Dtrain.Training.Tasks;

namespace Dtrain.Cli;

/// <summary>Shows a run: a live progress bar (step, loss, samples/s, ETA) on a terminal, plain log lines otherwise.</summary>
public static class ConsoleProgress
{
    public static TrainingSummary Run(bool plain, Func<ITrainingObserver, TrainingSummary> run)
    {
        if (plain || !AnsiConsole.Profile.Capabilities.Interactive || Console.IsOutputRedirected)
            return run(new LineObserver());
        TrainingSummary? summary = null;
        AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(BarColumns())
            .Start(ctx =>
            {
                var task = ctx.AddTask("preparing data", autoStart: true, maxValue: 1);
                summary = run(new BarObserver(task));
                // An interrupted run keeps its bar where it stopped.
                if (summary.StopReason is "finished" or "nothing left to train") task.Value = task.MaxValue;
                task.StopTask();
            });
        return summary!;
    }

    /// <summary>
    /// The bar's columns for `train` and `watch`: description, a 20-column bar, percentage, time remaining — with a short
    /// description (<see cref="BarText"/>) they fit an 80-column terminal, where the wide default layout left only "…".
    /// </summary>
    public static ProgressColumn[] BarColumns() =>
        [new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = 20 }, new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn()];

    /// <summary><paramref name="text"/> cut (at a space) to what the bar's other columns leave of the terminal's width.</summary>
    public static string BarText(string text)
    {
        var room = Math.Max(20, AnsiConsole.Profile.Width - 40);
        if (text.Length <= room) return text;
        var cut = text.LastIndexOf(' ', room);
        return text[..(cut > 0 ? cut : room)];
    }

    public static void PrintSummary(TrainingSummary s)
    {
        Console.WriteLine($"done: {s.StopReason} after {s.Steps} steps in {s.Elapsed:hh\\:mm\\:ss}{(s.SamplesPerSecond > 0 ? $" ({s.SamplesPerSecond:F1} samples/s)" : "")}");
        if (s.Final is not null) Console.WriteLine($"validation: {s.Final}");
        if (s.Checkpoint is not null) Console.WriteLine($"checkpoint: {s.Checkpoint}");
    }

    static string Describe(TrainingPlan p) =>
        $"{p.Name}: {p.Task}, {p.Parameters:N0} parameters, vocabulary {p.VocabSize}{(p.Classes > 0 ? $", {p.Classes} classes" : "")}, " +
        $"{p.TrainExamples:N0} training {TrainingTasks.For(p.Task).Unit}{(p.TrainExamples == 1 ? "" : "s")}, {p.StepsPerEpoch} steps/epoch, " +
        $"{p.TotalSteps} steps{(p.StartStep > 0 ? $" (resuming at {p.StartStep})" : "")}, device {p.Device}, {p.Threads} thread(s), output {p.OutputDir}";

    sealed class BarObserver(ProgressTask task) : ITrainingObserver
    {
        public void OnStart(TrainingPlan plan)
        {
            AnsiConsole.MarkupLineInterpolated($"[grey]{Describe(plan)}[/]");
            task.MaxValue = plan.TotalSteps;
            task.Value = plan.StartStep;
        }

        public void OnStep(StepReport r)
        {
            task.Value = r.Step;
            task.Description = BarText($"step {r.Step}/{r.TotalSteps} loss {r.Loss:F4}{(r.Skipped ? " (skipped)" : "")} {r.SamplesPerSecond:F0} samples/s lr {r.Lr:G3} epoch {r.Epoch + 1}");
        }

        public void OnEvaluation(long step, EvalMetrics m) => AnsiConsole.MarkupLineInterpolated($"[green]step {step}[/] validation: {m}");
        public void OnCheckpoint(long step, string path) => AnsiConsole.MarkupLineInterpolated($"[grey]step {step} checkpoint {path}[/]");
        public void OnMessage(string message) => AnsiConsole.MarkupLineInterpolated($"[yellow]{message}[/]");
    }

    sealed class LineObserver : ITrainingObserver
    {
        long every = 1;
        DateTime last = DateTime.MinValue;

        public void OnStart(TrainingPlan plan)
        {
            Console.WriteLine(Describe(plan));
            every = Math.Max(1, (plan.TotalSteps - plan.StartStep) / 50);
        }

        public void OnStep(StepReport r)
        {
            if (!r.Skipped && r.Step % every != 0 && r.Step != r.TotalSteps && DateTime.UtcNow - last < TimeSpan.FromSeconds(30)) return;
            last = DateTime.UtcNow;
            Console.WriteLine($"step {r.Step}/{r.TotalSteps} epoch {r.Epoch + 1} loss {r.Loss:F4}{(r.Skipped ? " (skipped)" : "")} lr {r.Lr:G3} grad-norm {r.GradNorm:F3} {r.SamplesPerSecond:F1} samples/s elapsed {r.Elapsed:hh\\:mm\\:ss} eta {r.Eta:hh\\:mm\\:ss}");
        }

        public void OnEvaluation(long step, EvalMetrics m) => Console.WriteLine($"step {step} validation: {m}");
        public void OnCheckpoint(long step, string path) => Console.WriteLine($"step {step} checkpoint {path}");
        public void OnMessage(string message) => Console.WriteLine(message);
    }
}
