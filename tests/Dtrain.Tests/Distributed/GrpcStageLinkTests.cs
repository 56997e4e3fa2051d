using System.Net;
using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;

namespace Dtrain.Tests.Distributed;

/// <summary>Pipeline stages talking over real gRPC streams on loopback (one Kestrel server per stage, in this process).</summary>
public class GrpcStageLinkTests
{
    sealed record Host(WebApplication App, string Address, StageMailboxes Mailboxes) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            try { await App.StopAsync(new CancellationToken(canceled: true)); } catch (OperationCanceledException) { }
            await App.DisposeAsync();
        }
    }

    static async Task<Host> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, l => l.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc(o => o.MaxReceiveMessageSize = 64 << 20);
        builder.Services.AddSingleton<StageMailboxes>();
        var app = builder.Build();
        app.MapGrpcService<StageLinkService>();
        await app.StartAsync();
        return new Host(app, app.Urls.Single(), app.Services.GetRequiredService<StageMailboxes>());
    }

    [Fact]
    public async Task Three_stages_over_grpc_train_exactly_as_in_memory()
    {
        const int stages = 3, micro = 4;
        var spec = PipelineEquivalenceTests.Spec(CellKinds.Lstm);
        var hosts = await Task.WhenAll(Enumerable.Range(0, stages).Select(_ => StartAsync()));
        var links = Enumerable.Range(0, stages).Select(s => new GrpcStageLinks("job-1", 1, 0, s,
            s > 0 ? hosts[s - 1].Address : null, s < stages - 1 ? hosts[s + 1].Address : null, hosts[s].Mailboxes, frameBytes: 1000)).ToList();
        try
        {
            // Frames of 1000 bytes: every activation crosses in several frames.
            var overGrpc = await PipelineEquivalenceTests.Pipelined(spec, stages, micro, PipelineSchedule.OneFOneBKind,
                step => [.. links.Select(l => l.ForStep(step))]);
            var reference = await PipelineEquivalenceTests.Pipelined(spec, stages, micro, PipelineSchedule.OneFOneBKind);
            foreach (var (name, values) in reference) Assert.Equal(values, overGrpc[name]);
        }
        finally
        {
            foreach (var l in links) await l.DisposeAsync();
            foreach (var h in hosts) await h.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_send_to_a_dead_stage_fails_naming_it()
    {
        var alive = await StartAsync();
        var dead = await StartAsync();
        var address = dead.Address;
        await dead.DisposeAsync();
        await using var links = new GrpcStageLinks("job-2", 1, 0, 0, null, address, alive.Mailboxes);
        using var activation = ones(2, 3, 4);
        var e = await Assert.ThrowsAsync<IOException>(() => links.ForStep(7).SendActivationAsync(1, activation, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains($"stage 1 ({address})", e.Message);
        Assert.Contains("step 7 micro-batch 1", e.Message);
        await alive.DisposeAsync();
    }

    [Fact]
    public async Task A_tensor_arrives_with_its_shape_and_values_whatever_the_order_of_send_and_receive()
    {
        await using var receiver = await StartAsync();
        await using var links = new GrpcStageLinks("job-3", 1, 0, 0, null, receiver.Address, new StageMailboxes(), frameBytes: 64);
        using var a = arange(0, 60, dtype: float32).reshape(3, 4, 5);
        await links.ForStep(2).SendActivationAsync(0, a, CancellationToken.None);
        var early = receiver.Mailboxes.ReceiveAsync("job-3", 1, 0, 1, StageTensorKind.Activation, 2, 1, CancellationToken.None);
        using var b = a * 2;
        await links.ForStep(2).SendActivationAsync(1, b, CancellationToken.None);
        var first = await receiver.Mailboxes.ReceiveAsync("job-3", 1, 0, 1, StageTensorKind.Activation, 2, 0, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));
        var second = await early.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal([3L, 4, 5], first.Shape);
        Assert.Equal(Enumerable.Range(0, 60).Select(i => (float)i), first.Values);
        Assert.Equal(Enumerable.Range(0, 60).Select(i => 2f * i), second.Values);
    }
}
