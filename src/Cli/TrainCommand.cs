using System.CommandLine;
using System.Runtime.InteropServices;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Cli;

/// <summary>`dtrain train job.json`: trains in this process with a live progress bar; Ctrl-C saves a checkpoint and exits.</summary>
public static class TrainCommand
{
    public static Command Create()
    {
        var spec = new Argument<FileInfo>("spec") { Description = "Job spec (JSON). Relative paths inside it are relative to the spec file." };
        var output = new Option<DirectoryInfo?>("--output", "-o") { Description = "Directory for checkpoints (default: the spec's \"output\", else runs/NAME)." };
        var resume = new Option<bool>("--resume") { Description = "Continue from the newest valid checkpoint in the output directory. Without it the run starts from scratch, and an earlier run's checkpoints there are first moved to OUTPUT/earlier-<UTC time>/." };
        var maxSteps = new Option<int?>("--max-steps") { Description = "Override training.max_steps." };
        var maxMinutes = new Option<double?>("--max-minutes") { Description = "Override training.max_minutes (wall-clock limit)." };
        var threads = new Option<int?>("--threads") { Description = "Override training.threads (intra-op torch threads; 0 = all cores)." };
        var device = new Option<string?>("--device") { Description = "Override training.device: cpu, cuda or cuda:N (falls back to CPU when CUDA is absent)." };
        var seed = new Option<int?>("--seed") { Description = "Override training.seed." };
        var plain = new Option<bool>("--plain") { Description = "Print log lines instead of a live progress bar (automatic when output is not a terminal)." };
        var budget = MemoryBudgetOption();
        var cmd = new Command("train", "Train a model in this process from a job spec, with evaluation and checkpoints; Ctrl-C saves a checkpoint and exits cleanly.");
        cmd.Arguments.Add(spec);
        foreach (var o in new Option[] { output, resume, maxSteps, maxMinutes, threads, device, seed, plain, budget }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var file = r.GetValue(spec)!;
            var job = JobSpecSerializer.Load(file.FullName);
            var t = job.Training;
            job = job with
            {
                Training = t with
                {
                    MaxSteps = r.GetValue(maxSteps) ?? t.MaxSteps,
                    MaxMinutes = r.GetValue(maxMinutes) ?? t.MaxMinutes,
                    Threads = r.GetValue(threads) ?? t.Threads,
                    Device = r.GetValue(device) ?? t.Device,
                    Seed = r.GetValue(seed) ?? t.Seed,
                },
            };
            var errors = JobSpecValidator.Validate(job);
            if (errors.Count > 0) throw new SpecException($"{file.Name} with command-line overrides", errors);
            var memory = Budget(r.GetValue(budget));

            using var cts = new CancellationTokenSource();
            var interrupts = 0;
            var terminated = false;
            // Ctrl-C, and SIGTERM as `timeout`, systemd, Docker and Kubernetes stop a process: finish the current step and
            // save a checkpoint; a second signal aborts at once without saving.
            bool Interrupt(string what, string again)
            {
                if (Interlocked.Increment(ref interrupts) != 1) return false;
                Console.Error.WriteLine($"{what}: finishing the current step and saving a checkpoint ({again} again to abort without saving)");
                cts.Cancel();
                return true;
            }
            ConsoleCancelEventHandler onCancel = (_, e) => e.Cancel = Interrupt("interrupt", "press Ctrl-C");
            Console.CancelKeyPress += onCancel;
            using var onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
            {
                terminated = true;
                c.Cancel = Interrupt("SIGTERM", "send SIGTERM");
            });
            try
            {
                var summary = ConsoleProgress.Run(r.GetValue(plain), observer =>
                    Trainer.Run(job, file.DirectoryName!, new TrainOptions { OutputDir = r.GetValue(output)?.FullName, Resume = r.GetValue(resume), MemoryBudget = memory, Source = file.Name }, observer, cts.Token));
                ConsoleProgress.PrintSummary(summary);
                return summary.StopReason != "interrupted" ? CliErrors.Ok : terminated ? CliErrors.Terminated : CliErrors.Interrupted;
            }
            finally
            {
                Console.CancelKeyPress -= onCancel;
            }
        }));
        return cmd;
    }

    /// <summary>`--memory-budget MB` of train and validate: the memory a job may need, else refused before anything is allocated.</summary>
    public static Option<double?> MemoryBudgetOption() => new("--memory-budget")
    {
        Description = "Refuse a job whose estimated memory (weights, gradients, optimizer state, activations of a batch) exceeds this many MB " +
                      "(10^6 bytes), before anything is allocated; 0 = no check. Default: the memory available now (MemAvailable, cgroup limit).",
    };

    /// <summary>The budget a --memory-budget value stands for: the given MB, 0 = none, absent = the available memory.</summary>
    public static MemoryBudget Budget(double? megabytes) =>
        megabytes is { } mb ? MemoryBudget.FromMegabytes(mb, "--memory-budget") : MemoryBudget.Available();
}
