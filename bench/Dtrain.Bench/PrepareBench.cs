using System.Diagnostics;
using System.Globalization;
using Dtrain.Data.Datasets;
using Dtrain.Specs;

namespace Dtrain.Bench;

/// <summary>
/// `prepare [--mb N] [--threads 1,2]`: dtrain prepare's throughput on bundled text (Moby Dick, data/) repeated to N MB
/// (default 600: a prepare's fixed start-up, ~0.25 CPU-s of JIT and runtime, is ~30 % of a 2-thread char run at 200 MB and
/// ~11 % at 600 MB; docs/benchmarks.md) in a temporary directory, for the char and word tokenizers on 1 and 2 threads, and each run's peak
/// resident memory (every run in a fresh process: VmHWM is per process), and its CPU time: MB per CPU second is the
/// one-core speed even on a machine busy with other work. The first row of each tokenizer is one core: one thread in a
/// process pinned to CPU 0, whose runtime threads (tiered JIT, GC) share that core as on a one-core machine (unpinned,
/// they take ~0.2 CPU-s of a 600 MB char run on the other core); the others run on all cores. Each row is the median of --repeat runs (default 3), the rows' runs
/// interleaved so that a slow minute of the machine falls on every row alike. Targets (issue 23): 100 MB/s char and 30 MB/s word on one core, 1.8x that on two, peak
/// RSS at most 500 MB whatever the size.
/// </summary>
internal static class PrepareBench
{
    const string Usage = "dtrain-bench prepare [--mb N] [--threads 1,2] [--repeat N (3)]";

    public static int Run(string root, string[] args)
    {
        if (BenchArgs.Help(args, Usage)) return 0;
        BenchArgs.CheckOptions(args, Usage, "--mb", "--threads", "--repeat");
        if (BenchArgs.Positional(args) is [var stray, ..]) throw new ArgumentException($"unexpected argument \"{stray}\" (usage: {Usage})");
        var mb = BenchArgs.Option(args, "--mb") is { } m ? BenchArgs.Number("--mb", m, 1, 1_000_000, Usage) : 600;
        var threads = BenchArgs.Option(args, "--threads") is { } list ? BenchArgs.Numbers("--threads", list, 1, 256, Usage) : [1, 2];
        var repeat = BenchArgs.Option(args, "--repeat") is { } r ? BenchArgs.Number("--repeat", r, 1, 100, Usage) : 3;
        var temp = Path.Combine(Path.GetTempPath(), $"dtrain-bench-prepare-{Environment.ProcessId}");
        Directory.CreateDirectory(temp);
        try
        {
            var corpus = Path.Combine(temp, "corpus.txt");
            var seed = File.ReadAllBytes(Path.Combine(root, "data", "moby-dick", "moby-dick.txt"));
            using (var f = File.Create(corpus))
                for (long written = 0; written < mb * 1_000_000L; written += seed.Length) f.Write(seed);
            var bytes = new FileInfo(corpus).Length;
            Console.WriteLine($"dtrain prepare on Moby Dick repeated to {bytes / 1e6:F0} MB (language model, 5% held out), {Environment.ProcessorCount} cores; " +
                $"each row the median of {repeat} run(s), the rows' runs interleaved (all runs' seconds in the last column)");
            Console.WriteLine();
            // One core: the process pinned to CPU 0 (taskset), so that its runtime's background threads (tiered JIT, GC)
            // share that core, as on a one-core machine. Then every thread count on all the cores.
            var rows = new[] { TokenizerKinds.Char, TokenizerKinds.Word }
                .SelectMany(kind => new[] { (Kind: kind, Cores: 1, Threads: 1) }.Concat(threads.Select(t => (Kind: kind, Cores: Environment.ProcessorCount, Threads: t))))
                .ToList();
            var runs = rows.ToDictionary(row => row, _ => new List<(double Seconds, double Cpu, double Peak)>());
            for (var i = 0; i < repeat; i++)
                foreach (var row in rows)
                {
                    var output = Path.Combine(temp, $"{row.Kind}-{row.Cores}-{row.Threads}");
                    runs[row].Add(Child(corpus, output, row.Kind, row.Threads, pinned: row.Cores == 1));
                    Directory.Delete(output, recursive: true);
                }
            Console.WriteLine("| tokenizer | cores | threads | seconds | MB/s | vs 1 core | vs 1 thread | CPU seconds | MB per CPU second | peak RSS MB | runs (seconds) |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
            double? oneCore = null, oneThread = null;
            foreach (var row in rows)
            {
                var all = runs[row];
                var (seconds, cpu, peak) = all.OrderBy(x => x.Seconds).ElementAt(all.Count / 2);
                var rate = bytes / 1e6 / seconds;
                if (row.Cores == 1) (oneCore, oneThread) = (rate, null);
                if (row.Cores > 1 && row.Threads == 1) oneThread ??= rate;
                var vsThread = row.Cores > 1 && oneThread is { } one ? $"{rate / one:F2}x" : "-";
                Console.WriteLine($"| {row.Kind} | {row.Cores} | {row.Threads} | {seconds:F2} | {rate:F1} | {rate / oneCore:F2}x | {vsThread} | {cpu:F1} | {bytes / 1e6 / cpu:F1} | {peak:F0} | {string.Join(", ", all.Select(x => x.Seconds.ToString("F2", CultureInfo.InvariantCulture)))} |");
            }
            return 0;
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
    }

    /// <summary>One preparation in a fresh process (this bench, `prepare-one`), pinned to CPU 0 when <paramref name="pinned"/>: its seconds, CPU seconds and peak RSS.</summary>
    static (double Seconds, double CpuSeconds, double PeakMb) Child(string corpus, string output, string kind, int threads, bool pinned)
    {
        var command = new List<string>();
        if (pinned)
        {
            var taskset = new[] { "/usr/bin/taskset", "/bin/taskset" }.FirstOrDefault(File.Exists)
                ?? throw new BenchFailureException("the one-core row needs taskset (util-linux) to pin the process to one CPU");
            command.AddRange([taskset, "-c", "0"]);
        }
        command.AddRange(["dotnet", typeof(PrepareBench).Assembly.Location, "prepare-one", corpus, output, kind, threads.ToString(CultureInfo.InvariantCulture)]);
        var psi = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in command.Skip(1)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new BenchFailureException($"prepare-one {kind} {threads}{(pinned ? " on one core" : "")} failed: {stderr.Result}");
        var fields = stdout.Result.Trim().Split(' ');
        return (double.Parse(fields[0], CultureInfo.InvariantCulture), double.Parse(fields[1], CultureInfo.InvariantCulture), double.Parse(fields[2], CultureInfo.InvariantCulture));
    }

    /// <summary>`prepare-one CORPUS OUTPUT KIND THREADS`: prepares and prints "seconds cpu-seconds peak-MB" (DTRAIN_BENCH_PASSES=1: each pass's start, seconds and CPU seconds, on stderr; DTRAIN_BENCH_RANGE_BYTES: the plain-text range size) (CPU time: the process's user + system time, JIT included, which a loaded machine does not inflate).</summary>
    public static int One(string[] args)
    {
        var clock = Stopwatch.StartNew();
        DatasetPreparer.Prepare(new PrepareOptions
        {
            Train = SourceFiles.Expand([args[1]], DatasetLayout.TrainSplit, DataFormats.Text),
            Output = args[2],
            Tokenizer = new TokenizerSpec { Kind = args[3] },
            Threads = int.Parse(args[4], CultureInfo.InvariantCulture),
            RangeBytes = Environment.GetEnvironmentVariable("DTRAIN_BENCH_RANGE_BYTES") is { } range ? int.Parse(range, CultureInfo.InvariantCulture) : TextRanges.DefaultRangeBytes,
        }, log: Environment.GetEnvironmentVariable("DTRAIN_BENCH_PASSES") == "1" ? m => Console.Error.WriteLine($"{clock.Elapsed.TotalSeconds:F3} s cpu {Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F3} {m}") : null);
        var seconds = clock.Elapsed.TotalSeconds;
        var cpu = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
        var line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        var peak = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
        if (Environment.GetEnvironmentVariable("DTRAIN_BENCH_PASSES") == "1")
            Console.Error.WriteLine($"allocated {GC.GetTotalAllocatedBytes() / 1e6:F0} MB, collections gen0 {GC.CollectionCount(0)} gen1 {GC.CollectionCount(1)} gen2 {GC.CollectionCount(2)}, GC pause {GC.GetTotalPauseDuration().TotalSeconds:F3} s");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{seconds:R} {cpu:R} {peak:F1}"));
        return 0;
    }
}
