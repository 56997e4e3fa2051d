using System.Diagnostics;
using System.Text.RegularExpressions;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Bench;

/// <summary>
/// The benchmark suite runs as documented (README, docs/benchmarks.md): a crash in it went unnoticed once. Tiny sizes,
/// one round: this checks that it runs and prints its table, not its numbers.
/// </summary>
public class BenchSmokeTests
{
    private static string BenchDll()
    {
        // The bench is built with the solution, in the configuration these tests were built in.
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent?.Name ?? "Release";
        var dll = RepoFiles.PathOf("bench", "Dtrain.Bench", "bin", configuration, "net10.0", "dtrain-bench.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: build Distributed.sln first");
        return dll;
    }

    [Fact]
    public async Task Allreduce_prints_a_row_per_transport()
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { BenchDll(), "allreduce", "--transports", "shm,shm-ring,tcp,grpc", "--workers", "2", "--sizes", "1", "--rounds", "1" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = await p.StandardOutput.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await p.WaitForExitAsync(timeout.Token);
        Assert.True(p.ExitCode == 0, $"exit status {p.ExitCode}\n{stdout}\n{await stderr}");
        foreach (var transport in new[] { "shm", "shm-ring", "tcp", "grpc" })
            Assert.Matches($@"(?m)^\| {transport} \| 2 \| 1M \| 4 \| [0-9.]+ \| [0-9.]+ \[", stdout);
    }

    [Fact]
    public async Task Allreduce_runs_tcp_tls_with_AES_128_and_AES_256_records_side_by_side()
    {
        var (code, stdout, stderr) = await RunAsync("allreduce", "--transports", "tcp+tls,tcp+tls256", "--workers", "2", "--sizes", "1", "--rounds", "1");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        foreach (var transport in new[] { @"tcp\+tls", @"tcp\+tls256" })
            Assert.Matches($@"(?m)^\| {transport} \| 2 \| 1M \| 4 \| [0-9.]+ \| [0-9.]+ \[", stdout);
        await AssertRefusedAsync("\"shm+tls256\" is not shm, shm-copy, shm-ring, tcp, tcp+tls, tcp+tls256, grpc or grpc+tls", "allreduce", "--transports", "shm+tls256");
    }

    [Fact]
    public async Task Compose_allreduce_puts_the_loopback_clusters_all_reduce_per_step_in_its_table_and_refuses_what_it_cannot_run()
    {
        // The loopback half only (the compose half needs a Docker engine and an image: tests/Dtrain.E2E's ground).
        var report = Path.Combine(Path.GetTempPath(), $"dtrain-compose-bench-{Guid.NewGuid():N}.md");
        try
        {
            var (code, stdout, stderr) = await RunAsync("compose-allreduce", "w1", "--warmup", "1", "--steps", "2", "--clusters", "loopback", "--transports", "auto,tcp", "--report", report);
            Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
            // auto on one host: the shared-memory group; Worker:Transport=tcp: the ring over plain TCP (no TLS on loopback).
            Assert.Matches(@"(?m)^\| w1 \| 1 \+ 2 \| loopback \| auto \| shared-memory group \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", stdout);
            Assert.Matches(@"(?m)^\| w1 \| 1 \+ 2 \| loopback \| tcp \| ring over tcp \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", stdout);
            Assert.Contains("| w1 | 1 + 2 | loopback | tcp |", File.ReadAllText(report));
        }
        finally
        {
            File.Delete(report);
        }
        await AssertRefusedAsync("--clusters: \"kubernetes\" is not loopback or compose", "compose-allreduce", "--clusters", "kubernetes");
        await AssertRefusedAsync("--transports: \"shm\" is not auto or tcp", "compose-allreduce", "--transports", "shm");
        await AssertRefusedAsync("unknown workload \"gru\": w1 or w2", "compose-allreduce", "gru");
        await AssertRefusedAsync("--steps: \"0\" is not a whole number from 1 to 10000", "compose-allreduce", "--steps", "0");
    }

    [Fact]
    public async Task Recurrent_prints_each_batch_size_and_the_split_ceiling()
    {
        var (code, stdout, stderr) = await RunAsync("recurrent", "--cell", "gru", "--hidden", "32", "--rows", "4", "--batch", "8", "--rounds", "1");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        // Rows 4 and 8 (the batch) with 1 thread, the batch with 2 threads; then the ceiling of a 2-way split.
        foreach (var (rows, threads) in new[] { (4, 1), (8, 1), (8, 2) })
            Assert.Matches($@"(?m)^\| 32 \| 0 \| {rows} \| {threads} \| [0-9.]+ \| [0-9.]+ \|$", stdout);
        Assert.Matches(@"(?m)^\| 32 \| 0 \| [0-9.]+ \| [0-9.]+ \|$", stdout);
        Assert.Contains("2 replicas x 4 rows", stdout);
        // The per-time-step products (GRU: 3 gates), for each row count, and what they allow for the split.
        foreach (var rows in new[] { 4, 8 })
            Assert.Matches($@"(?m)^\| 32 \| {rows} \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|$", stdout);
        Assert.Contains("(G = 3 gates)", stdout);
        Assert.Matches(@"(?m)^\| 32 \| [0-9.]+ \|$", stdout);

        await AssertRefusedAsync("--batch 7: must be even", "recurrent", "--batch", "7");
        await AssertRefusedAsync("--hidden: \"100000\" is not a whole number from 1 to 4096", "recurrent", "--hidden", "256,100000");
    }

    [Fact]
    public async Task Seal_prints_each_record_size_and_case_and_refuses_a_key_that_is_not_AES_128_or_256()
    {
        var (code, stdout, stderr) = await RunAsync("seal", "--sizes", "16,64", "--mb", "8", "--rounds", "1");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        foreach (var size in new[] { 16, 64 })
            foreach (var what in new[] { @"\(a\) seal in cache", @"\(b\) seal stream -> one small buffer", @"\(b\) open small -> stream \(one pass\)" })
                Assert.Matches($@"(?m)^\| {size} KiB \| {what}[^|]* \| [0-9.]+ \[[0-9.]+-[0-9.]+\] \| [0-9.]+ \|$", stdout);
        await AssertRefusedAsync("--key: 24 is not 16 or 32", "seal", "--key", "24");
    }

    [Fact]
    public async Task Numbers_that_do_not_parse_or_are_out_of_range_are_refused_naming_the_argument()
    {
        // These ended in an unhandled FormatException (or an overflowed size) before.
        foreach (var (name, value, range, args) in new (string, string, string, string[])[]
                 {
                     ("--workers", "x", "2 to 16", ["allreduce", "--workers", "x"]),
                     ("--sizes", "4096", "1 to 256", ["allreduce", "--sizes", "16,4096"]),
                     ("--rounds", "0", "1 to 100", ["allreduce", "--rounds", "0"]),
                     ("threads", "two", "1 to 64", ["speed", "two"]),
                     ("rounds", "-1", "1 to 100", ["pipeline", "links", "-1"]),
                 })
            await AssertRefusedAsync($"{name}: \"{value}\" is not a whole number from {range}", args);
    }

    [Fact]
    public async Task Pipeline_refuses_options_and_layouts_it_cannot_run_before_starting_workers()
    {
        await AssertRefusedAsync("unknown option --layout", "pipeline", "--layout", "2x4");
        await AssertRefusedAsync("\"2by4\" is not K x M", "pipeline", "--layouts", "2by4");
        await AssertRefusedAsync("9 stages, the model has 8 layers", "pipeline", "--layouts", "9x4");
        await AssertRefusedAsync("5 micro-batches must divide the batch of 32", "pipeline", "--layouts", "2x5");
        await AssertRefusedAsync("\"udp\" is not a worker transport", "pipeline", "--transports", "shm,udp");
        // A stray argument equal to an option's value is still stray.
        await AssertRefusedAsync("unexpected argument \"2x4\"", "pipeline", "--layouts", "2x4", "2x4");
    }

    [Fact]
    public async Task Cluster_reads_its_workloads_with_or_without_rounds_and_refuses_what_it_cannot_run()
    {
        // The workloads without ROUNDS used to be ignored (every workload ran): an unknown one is now refused at once.
        await AssertRefusedAsync("unknown workload \"w9\"", "cluster", "w9");
        await AssertRefusedAsync("unknown workload \"w9\"", "cluster", "2", "w9", "--report", "x.md");
        await AssertRefusedAsync("ROUNDS 0: a whole number from 1 to 100", "cluster", "0", "w1");
        await AssertRefusedAsync("unexpected argument \"gru\"", "cluster", "1", "w1", "gru");
    }

    [Fact]
    public async Task Prepare_prints_a_one_core_row_and_a_row_per_thread_count_for_each_tokenizer_and_refuses_stray_arguments()
    {
        var (code, stdout, stderr) = await RunAsync("prepare", "--mb", "2", "--threads", "1,2");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        var cores = Environment.ProcessorCount;
        foreach (var kind in new[] { "char", "word" })
            foreach (var row in new[] { $"| {kind} | 1 | 1 |", $"| {kind} | {cores} | 1 |", $"| {kind} | {cores} | 2 |" }) Assert.Contains(row, stdout);
        Assert.Contains("peak RSS MB", stdout);
        await AssertRefusedAsync("unexpected argument \"50\"", "prepare", "50");
        await AssertRefusedAsync("--threads: \"0\" is not a whole number from 1 to 256", "prepare", "--threads", "1,0");
    }

    [Fact]
    public async Task Inference_compares_onnx_runtime_and_torchsharp_and_serve_runs_every_row()
    {
        var (code, stdout, stderr) = await RunAsync("inference", "--calls", "20", "--words", "10");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        Assert.Matches(@"(?m)^ONNX Runtime \(\.onnx\): single text p50 [0-9.]+ ms, p99 [0-9.]+ ms, .* 32: [0-9]+ ", stdout);
        Assert.Matches(@"(?m)^TorchSharp \(\.dtck\): single text p50 [0-9.]+ ms, p99 [0-9.]+ ms, .* 32: [0-9]+ ", stdout);
        Assert.Contains("target <= 1 ms", stdout);
        await AssertRefusedAsync("--texts and --words: give one of them", "inference", "--words", "3", "--texts", "x.jsonl");

        (code, stdout, stderr) = await RunAsync("serve", "--requests", "40", "--total", "64", "--words", "5", "--sizes", "16x24,24x32x2", "--vocab", "50");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        foreach (var row in new[] { "forward passes alone", "max-batch 1, concurrency 32:", "max-batch 32, max-wait 5 ms, concurrency 32:", "gRPC: max-batch 32", "64 requests from 64 clients:", "none lost or failed: 64 of 64" })
            Assert.Contains(row, stdout);
        // Each further size gets its own forward-only and load lines, and every size a line with both ratios.
        foreach (var row in new[] { "size 24x32x2: forward passes alone", "size 24x32x2: max-batch 1, concurrency 32:", "size 24x32x2: dynamic batching:" })
            Assert.Contains(row, stdout);
        foreach (var size in new[] { "16x24", "24x32x2" })
            Assert.Matches($@"(?m)^  size {size}: forward passes alone batch 32 / batch 1 [0-9.]+x \([0-9.]+x per CPU second\); server dynamic batching / max-batch 1 [0-9.]+x .*p99/p50 [0-9.]+: (met|NOT met)$", stdout);
        Assert.Single(Regex.Matches(stdout, "none lost or failed"));
        await AssertRefusedAsync("--sizes: \"64\" is not EMBEDDINGxHIDDEN", "serve", "--sizes", "64");
        await AssertRefusedAsync("--sizes hidden: \"0\" is not a whole number", "serve", "--sizes", "64x0");
        await AssertRefusedAsync("give one of them", "serve", "--sizes", "64x96", "--hidden", "128");
    }

    [Fact]
    public async Task Serve_takes_real_texts_of_mixed_lengths_and_prints_where_the_time_goes()
    {
        using var tmp = new TempDir();
        var lines = Path.Combine(tmp.Path, "texts.txt");
        File.WriteAllLines(lines, ["win money now", "", "meeting notes for the project on monday at ten with everyone from the team", "offer", "notes notes money zebra win win"]);
        var (code, stdout, stderr) = await RunAsync("serve", "--requests", "40", "--total", "64", "--texts", lines, "--sizes", "16x24");
        Assert.True(code == 0, $"exit status {code}\n{stdout}\n{stderr}");
        Assert.Contains($"4 texts of {lines} (words per text p10/p50/p90/max 1/3/6/14)", stdout);
        Assert.Contains("word vocabulary fitted on the texts", stdout);
        // Measured in a child process with serve-model's own process settings.
        Assert.Contains("serve-model's process settings: tiered compilation off", stdout);
        Assert.Matches(@"(?m)^max-batch 32, max-wait 5 ms, concurrency 32: .*; in the server: queue wait mean [0-9.]+ ms, p99 <= [0-9.]+ ms, forward pass mean [0-9.]+ ms, p99 <= [0-9.]+ ms; [0-9.]+ ms CPU per request in the server, [0-9.]+ in the clients$", stdout);
        // The load's clients run in a process of their own, as an outside client: the server's process only serves.
        Assert.Contains("the clients in a process of their own", stdout);
        Assert.Contains("none lost or failed: 64 of 64", stdout);

        var jsonl = Path.Combine(tmp.Path, "texts.jsonl");
        File.WriteAllLines(jsonl, ["""{"text": "win money now", "label": "spam"}""", """{"label": "ham"}"""]);
        await AssertRefusedAsync($"--texts {jsonl}, line 2: not an object with a \"text\" string", "serve", "--texts", jsonl);
        File.WriteAllLines(jsonl, ["""{"text": "win money now"}""", "{not json"]);
        await AssertRefusedAsync($"--texts {jsonl}, line 2: not valid JSON", "serve", "--texts", jsonl);
        await AssertRefusedAsync("no such file", "serve", "--texts", Path.Combine(tmp.Path, "missing.txt"));
        await AssertRefusedAsync("--texts and --words: give one of them", "serve", "--texts", lines, "--words", "3");
        await AssertRefusedAsync("--vocab is for the synthetic texts of --words", "serve", "--texts", lines, "--vocab", "50");
    }

    /// <summary>The bench exits with status 2 and says <paramref name="expected"/> on stderr.</summary>
    private static async Task AssertRefusedAsync(string expected, params string[] args)
    {
        var (code, stdout, stderr) = await RunAsync(args);
        Assert.True(code == 2, $"{string.Join(' ', args)}: exit status {code}\n{stdout}\n{stderr}");
        Assert.Contains(expected, stderr);
    }

    private static async Task<(int Code, string Stdout, string Stderr)> RunAsync(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(BenchDll());
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = await p.StandardOutput.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        await p.WaitForExitAsync(timeout.Token);
        return (p.ExitCode, stdout, await stderr);
    }
}
