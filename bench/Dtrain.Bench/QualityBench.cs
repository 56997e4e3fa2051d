using System.Diagnostics;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Bench;

/// <summary>Trains the bundled example jobs and checks them against the targets: Moby Dick loss, SpamAssassin accuracy, long-range recall.</summary>
public static class QualityBench
{
    sealed class Log(string name) : ITrainingObserver
    {
        public void OnStart(TrainingPlan plan) => Console.WriteLine($"[{name}] {plan.Parameters:N0} parameters, {plan.TotalSteps} steps max, {plan.Threads} thread(s)");
        public void OnEvaluation(long step, EvalMetrics metrics) => Console.WriteLine($"[{name}] step {step}: {metrics}");
        public void OnMessage(string message) => Console.WriteLine($"[{name}] {message}");
    }

    public static int Run(string examplesDir, IReadOnlyCollection<string> only)
    {
        var rows = new List<(string Job, string Metric, double Value, string Target, bool Ok, long Steps, TimeSpan Time)>();
        (TrainingSummary Summary, TimeSpan Time) Train(string job)
        {
            var path = Path.Combine(examplesDir, job + ".json");
            var spec = JobSpecSerializer.Load(path);
            var output = Path.Combine(Path.GetTempPath(), "dtrain-bench", job);
            if (Directory.Exists(output)) Directory.Delete(output, recursive: true);
            var sw = Stopwatch.StartNew();
            var s = Trainer.Run(spec, Path.GetDirectoryName(path)!, new TrainOptions { OutputDir = output }, new Log(job), CancellationToken.None);
            return (s, sw.Elapsed);
        }
        bool Want(string group) => only.Count == 0 || only.Contains(group);

        if (Want("moby"))
        {
            var (s, t) = Train("moby-char-lstm");
            rows.Add(("moby-char-lstm", "validation loss (nats/char)", s.Final!.Loss, "<= 1.50", s.Final.Loss <= 1.50, s.Steps, t));
        }
        if (Want("spam"))
        {
            var (s, t) = Train("spam-lstm");
            rows.Add(("spam-lstm", "validation accuracy", s.Final!.Accuracy!.Value, ">= 0.95", s.Final.Accuracy >= 0.95, s.Steps, t));
        }
        if (Want("recall"))
        {
            foreach (var cell in new[] { "rnn", "lstm", "gru" })
            {
                var (s, t) = Train("recall-" + cell);
                var acc = s.Final!.Accuracy!.Value;
                var ok = cell == "rnn" ? acc < 0.40 : acc >= 0.90;
                rows.Add(($"recall-{cell} (distance 200, 4 classes)", "validation accuracy", acc, cell == "rnn" ? "< 0.40 (chance 0.25)" : ">= 0.90", ok, s.Steps, t));
            }
        }

        Console.WriteLine();
        Console.WriteLine($"| job | metric | value | target | met | steps | time |");
        Console.WriteLine($"|---|---|---|---|---|---|---|");
        foreach (var r in rows)
            Console.WriteLine($"| {r.Job} | {r.Metric} | {r.Value:F4} | {r.Target} | {(r.Ok ? "yes" : "NO")} | {r.Steps} | {r.Time:mm\\:ss} |");
        return rows.All(r => r.Ok) ? 0 : 1;
    }
}
