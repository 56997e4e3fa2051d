using System.Diagnostics;
using System.Globalization;
using System.Net;
using Dtrain.Collective;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dtrain.Bench;

/// <summary>
/// <c>dtrain-bench allreduce</c>: the gRPC ring all-reduce against the point-to-point limit of its own transport, every
/// worker a separate process (children of this exe, <c>allreduce --peer ...</c>) on loopback ports, each told it has
/// one CPU (DOTNET_PROCESSOR_COUNT=1). Bus bandwidth as in nccl-tests: algbw = bytes / time, busbw = algbw * 2(W-1)/W.
/// </summary>
public static class CollectiveBench
{
    private const int Warmup = 3;
    private const int Iterations = 10;
    private const int P2pPiecesPerIteration = 64;   // 64 MiB per timed transfer

    public static int Run(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (args.Length > 1 && args[1] == "--peer") return PeerAsync(args[2..]).GetAwaiter().GetResult();
        return MainAsync().GetAwaiter().GetResult();
    }

    private static async Task<int> MainAsync()
    {
        Console.WriteLine($"ring all-reduce over gRPC: loopback, one process per worker (DOTNET_PROCESSOR_COUNT=1), {Environment.ProcessorCount} cores, {Warmup} warm-up + {Iterations} timed iterations");
        var p2pSeconds = await RunWorkersAsync("p2p", 2, RingAllReduce.DefaultMaxPieceFloats * P2pPiecesPerIteration);
        var p2p = (double)P2pPiecesPerIteration * RingAllReduce.DefaultMaxPieceFloats * sizeof(float) / p2pSeconds / 1e9;
        Console.WriteLine($"p2p: one client stream, 1 MiB chunks, 2 processes: {p2p:F3} GB/s");
        Console.WriteLine();
        Console.WriteLine("workers  floats   MB     ms/op   algbw GB/s  busbw GB/s  p2p GB/s  busbw/p2p");
        foreach (var world in new[] { 2, 4 })
            foreach (var floats in new[] { 4 << 20, 16 << 20 })
            {
                var seconds = await RunWorkersAsync("ring", world, floats);
                var bytes = (double)floats * sizeof(float);
                var algbw = bytes / seconds / 1e9;
                var busbw = algbw * 2 * (world - 1) / world;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{world,7}  {floats >> 20,4}M  {bytes / 1e6,5:F1}  {seconds * 1e3,7:F1}  {algbw,10:F3}  {busbw,10:F3}  {p2p,8:F3}  {busbw / p2p,9:F2}"));
            }
        return 0;
    }

    /// <summary>Starts W peers, wires their addresses, returns the slowest rank's mean seconds per iteration.</summary>
    private static async Task<double> RunWorkersAsync(string kind, int world, int floats)
    {
        var (exe, prefix) = SelfCommand();
        var peers = new List<Process>();
        try
        {
            for (var rank = 0; rank < world; rank++)
            {
                var start = new ProcessStartInfo(exe)
                {
                    RedirectStandardInput = true,
                    RedirectStandardOutput = true,
                    UseShellExecute = false,
                };
                foreach (var a in prefix.Concat(["allreduce", "--peer", kind, $"{rank}", $"{world}", $"{floats}"])) start.ArgumentList.Add(a);
                // One CPU per worker unless the caller says otherwise (children inherit the environment).
                if (Environment.GetEnvironmentVariable("DOTNET_PROCESSOR_COUNT") is null) start.Environment["DOTNET_PROCESSOR_COUNT"] = "1";
                peers.Add(Process.Start(start) ?? throw new InvalidOperationException("cannot start a peer process"));
            }
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
            var addresses = new List<string>();
            foreach (var peer in peers) addresses.Add(await ReadTaggedLineAsync(peer, "ADDRESS ", timeout.Token));
            foreach (var peer in peers)
            {
                await peer.StandardInput.WriteLineAsync(string.Join(',', addresses));
                await peer.StandardInput.FlushAsync(timeout.Token);
            }
            var results = new List<double>();
            foreach (var peer in peers) results.Add(double.Parse(await ReadTaggedLineAsync(peer, "RESULT ", timeout.Token), CultureInfo.InvariantCulture));
            foreach (var peer in peers) await peer.WaitForExitAsync(timeout.Token);
            return results.Max();
        }
        finally
        {
            foreach (var peer in peers)
            {
                if (!peer.HasExited) peer.Kill(entireProcessTree: true);
                peer.Dispose();
            }
        }
    }

    private static async Task<string> ReadTaggedLineAsync(Process peer, string tag, CancellationToken cancellationToken)
    {
        while (true)
        {
            var line = await peer.StandardOutput.ReadLineAsync(cancellationToken) ?? throw new InvalidOperationException($"peer {peer.Id} exited before printing {tag.Trim()}");
            if (line.StartsWith(tag, StringComparison.Ordinal)) return line[tag.Length..];
        }
    }

    /// <summary>How to start this bench again in a child process: the apphost, or `dotnet dtrain-bench.dll`.</summary>
    internal static (string Exe, string[] Prefix) SelfCommand()
    {
        var process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        // Run through "dotnet dtrain-bench.dll": start the dll the same way.
        return Path.GetFileNameWithoutExtension(process) == "dotnet" ? (process, [typeof(CollectiveBench).Assembly.Location]) : (process, []);
    }

    /// <summary>A worker: host the collective endpoint, print its address, read everyone's, run, print the mean time.</summary>
    private static async Task<int> PeerAsync(string[] args)
    {
        var kind = args[0];
        var rank = int.Parse(args[1], CultureInfo.InvariantCulture);
        var world = int.Parse(args[2], CultureInfo.InvariantCulture);
        var floats = int.Parse(args[3], CultureInfo.InvariantCulture);

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.AddDtrainCollective(new IPEndPoint(IPAddress.Loopback, 0));
        await using var app = builder.Build();
        app.MapDtrainCollective();
        await app.StartAsync();
        Console.WriteLine($"ADDRESS {app.Urls.Single()}");
        var addresses = (Console.ReadLine() ?? throw new InvalidOperationException("no peer list on stdin")).Split(',');
        var transport = await GrpcRingTransport.ConnectAsync("bench", 1, rank, world, addresses, app.Services.GetRequiredService<RingMailboxes>());

        double seconds;
        if (kind == "p2p") seconds = await PointToPointAsync(transport, floats);
        else
        {
            var buffer = new float[floats];
            var random = new Random(rank);
            for (var i = 0; i < buffer.Length; i++) buffer[i] = random.NextSingle();
            var allReduce = new RingAllReduce(transport);
            long op = 0;
            for (var i = 0; i < Warmup; i++) await allReduce.SumAsync(buffer, op++);
            await allReduce.SumAsync(new float[world], op++);   // barrier
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < Iterations; i++) await allReduce.SumAsync(buffer, op++);
            seconds = clock.Elapsed.TotalSeconds / Iterations;
        }
        if (Environment.GetEnvironmentVariable("DTRAIN_BENCH_GC") is not null)
            Console.Error.WriteLine($"[{kind} w{world} r{rank} {floats >> 20}M] gc {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)} allocated {GC.GetTotalAllocatedBytes() >> 20} MiB cpu {Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds:F2}s user {Process.GetCurrentProcess().UserProcessorTime.TotalSeconds:F2}s wall {seconds * (Warmup + Iterations):F2}s");
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT {seconds:R}"));
        // Leave the ring first: completing our stream lets the right neighbour's server finish its Push call, so no
        // host waits out its graceful-shutdown timeout for an inbound stream that is still open.
        await transport.DisposeAsync();
        await app.StopAsync();
        return 0;
    }

    /// <summary>Rank 0 streams 1 MiB pieces to rank 1, which acknowledges each iteration with one float.</summary>
    private static async Task<double> PointToPointAsync(IRingTransport transport, int floats)
    {
        var pieceFloats = RingAllReduce.DefaultMaxPieceFloats;
        var pieces = floats / pieceFloats;
        var data = new float[pieceFloats];
        var ack = new float[1];
        var clock = new Stopwatch();
        for (var iteration = 0; iteration < Warmup + Iterations; iteration++)
        {
            if (iteration == Warmup) clock.Start();
            if (transport.Rank == 0)
            {
                for (var p = 0; p < pieces; p++)
                {
                    using var piece = RingPiece.Borrow(new RingTag(iteration, 0, 0, p), 0, pieces, data);
                    await transport.SendAsync(piece, CancellationToken.None);
                }
                (await transport.ReceiveAsync(new RingTag(iteration, 1, 0, 0), CancellationToken.None)).Dispose();
            }
            else
            {
                for (var p = 0; p < pieces; p++) (await transport.ReceiveAsync(new RingTag(iteration, 0, 0, p), CancellationToken.None)).Dispose();
                using var piece = RingPiece.Borrow(new RingTag(iteration, 1, 0, 0), 0, 1, ack);
                await transport.SendAsync(piece, CancellationToken.None);
            }
        }
        return clock.Elapsed.TotalSeconds / Iterations;
    }
}
