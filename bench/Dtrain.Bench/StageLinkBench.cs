using System.Diagnostics;
using System.Globalization;
using System.Net;
using Dtrain.Collective;
using Dtrain.Distributed.Pipeline;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;

namespace Dtrain.Bench;

/// <summary>
/// Pipeline stage links alone: two stages in this process, each on its own real Kestrel host on loopback (the
/// collective service and the StageLink service, as a worker hosts them), an activation tensor forward and an
/// activation gradient of the same shape back, per transport (grpc = GrpcStageLinks, tcp and shm = PeerStageLinks
/// over the data plane) and tensor size. Transports alternate within each round; medians of the rounds.
/// </summary>
public static class StageLinkBench
{
    public static int Run(int rounds)
    {
        RunAsync(rounds).GetAwaiter().GetResult();
        return 0;
    }

    static async Task<WebApplication> HostAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.AddDtrainCollective(new IPEndPoint(IPAddress.Loopback, 0));
        builder.Services.AddSingleton<StageMailboxes>();
        var app = builder.Build();
        app.MapDtrainCollective();
        app.MapGrpcService<StageLinkService>();
        await app.StartAsync();
        return app;
    }

    static async Task RunAsync(int rounds)
    {
        await using var host0 = await HostAsync();
        await using var host1 = await HostAsync();
        string Address(WebApplication app) => app.Urls.Single();
        var transports = new[] { "grpc", "tcp", "shm" };
        var sizes = new[] { (32, 8, 256), (32, 32, 256), (32, 64, 512) };   // batch x seq x hidden: 64K, 256K, 1M floats
        var results = new Dictionary<(string, int), List<double>>();
        long generation = 0;
        for (var round = 0; round < rounds; round++)
            foreach (var size in sizes)
                foreach (var transport in round % 2 == 0 ? transports : transports.Reverse())
                {
                    generation++;
                    IStageLinkSet a, b;
                    if (transport == "grpc")
                    {
                        a = new GrpcStageLinks("bench", generation, 0, 0, null, Address(host1), host0.Services.GetRequiredService<StageMailboxes>());
                        b = new GrpcStageLinks("bench", generation, 0, 1, Address(host0), null, host1.Services.GetRequiredService<StageMailboxes>());
                    }
                    else
                    {
                        var kind = transport == "shm" ? DataTransport.Shm : DataTransport.Tcp;
                        var planes = new[] { host0, host1 }.Select(h => h.Services.GetRequiredService<DataPlane>()).ToArray();
                        var peers = await Task.WhenAll(
                            planes[0].ConnectStageLinksAsync("bench", generation, 0, 0, 2, null, Address(host1), kind),
                            planes[1].ConnectStageLinksAsync("bench", generation, 0, 1, 2, Address(host0), null, kind));
                        a = new PeerStageLinks(peers[0], "bench", planes[0].Mailboxes.MaxPieceFloats);
                        b = new PeerStageLinks(peers[1], "bench", planes[1].Mailboxes.MaxPieceFloats);
                    }
                    await using (a)
                    await using (b)
                    {
                        using var activation = randn(size.Item1, size.Item2, size.Item3);
                        var bytes = activation.numel() * sizeof(float);
                        var iterations = (int)Math.Max(4, (256L << 20) / bytes / 2);   // ~256 MB each way per measurement
                        async Task Exchange(long step)
                        {
                            var sa = a.ForStep(step);
                            var sb = b.ForStep(step);
                            var send = sa.SendActivationAsync(0, activation, default);
                            using var got = await sb.ReceiveActivationAsync(0, default);
                            await send;
                            var back = sb.SendGradientAsync(0, got, default);
                            using var gradient = await sa.ReceiveGradientAsync(0, default);
                            await back;
                        }
                        await Exchange(0);   // warm-up (opens the gRPC streams)
                        var clock = Stopwatch.StartNew();
                        for (var i = 1; i <= iterations; i++) await Exchange(i);
                        var gbps = 2.0 * iterations * bytes / clock.Elapsed.TotalSeconds / 1e9;
                        var key = (transport, (int)activation.numel());
                        if (!results.TryGetValue(key, out var list)) results[key] = list = [];
                        list.Add(gbps);
                        Console.Error.WriteLine($"round {round + 1} {transport} {activation.numel()} floats: {gbps:F2} GB/s");
                    }
                }
        Console.WriteLine($"Stage links, 2 stages in one process on loopback, activation forward + gradient back; GB/s of tensor bytes (both directions), median of {rounds} round(s) (min-max)");
        Console.WriteLine("| tensor (floats) | MB | " + string.Join(" | ", transports) + " | shm / grpc | tcp / grpc |");
        Console.WriteLine("|---|---|" + string.Concat(Enumerable.Repeat("---|", transports.Length + 2)));
        foreach (var size in sizes)
        {
            var n = size.Item1 * size.Item2 * size.Item3;
            double Median(string t) => BenchArgs.Median(results[(t, n)]);
            string Cell(string t) { var l = results[(t, n)]; return string.Create(CultureInfo.InvariantCulture, $"{Median(t):F2} ({l.Min():F2}-{l.Max():F2})"); }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {n} | {n * 4 / 1e6:F2} | {string.Join(" | ", transports.Select(Cell))} | {Median("shm") / Median("grpc"):F2}x | {Median("tcp") / Median("grpc"):F2}x |"));
        }
    }
}
