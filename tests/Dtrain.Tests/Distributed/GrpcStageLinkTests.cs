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

    /// <summary>
    /// Watches (or cuts) the writes of the links' streams: whether the receiver's response headers, saying it accepted
    /// the stream, had arrived when each frame was written; with <paramref name="cut"/>, every write fails as .NET's do
    /// when the HTTP/2 stream was cut under it (HttpRequestException "The request was aborted").
    /// </summary>
    sealed class WatchWrites(bool cut = false) : Grpc.Core.Interceptors.Interceptor
    {
        public readonly System.Collections.Concurrent.ConcurrentQueue<bool> AcceptedAtWrite = new();

        public override Grpc.Core.AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(
            Grpc.Core.Interceptors.ClientInterceptorContext<TRequest, TResponse> context, AsyncClientStreamingCallContinuation<TRequest, TResponse> continuation)
        {
            var call = continuation(context);
            return new Grpc.Core.AsyncClientStreamingCall<TRequest, TResponse>(new Watched<TRequest>(call.RequestStream, call.ResponseHeadersAsync, this, cut),
                call.ResponseAsync, call.ResponseHeadersAsync, call.GetStatus, call.GetTrailers, call.Dispose);
        }

        sealed class Watched<T>(Grpc.Core.IClientStreamWriter<T> inner, Task<Grpc.Core.Metadata> headers, WatchWrites watch, bool cut) : Grpc.Core.IClientStreamWriter<T>
        {
            public Grpc.Core.WriteOptions? WriteOptions { get => inner.WriteOptions; set => inner.WriteOptions = value; }

            public Task WriteAsync(T message)
            {
                watch.AcceptedAtWrite.Enqueue(headers.IsCompletedSuccessfully && headers.Result.GetValue(StageLinkService.AcceptedHeader) == "accepted");
                return cut
                    ? Task.FromException(new HttpRequestException("The request was aborted.", new IOException("the HTTP/2 connection was closed (GOAWAY)")))
                    : inner.WriteAsync(message);
            }

            public Task CompleteAsync() => inner.CompleteAsync();
        }
    }

    /// <summary>
    /// A link's frames go out only once the receiving stage answered its stream: .NET's HTTP/2 client replays a request
    /// the server has not answered on a new connection when the old one is closed (GOAWAY), and grpc-dotnet replays it
    /// without the frames already written (Dtrain.Rpc.ClientStreams) — the receiver would wait for tensors the sender
    /// believes sent. (Before, the receiver answered nothing until the stream ended and the sender wrote at once.)
    /// </summary>
    [Fact]
    public async Task A_links_first_frame_is_written_only_once_the_receiving_stage_accepted_its_stream()
    {
        await using var receiver = await StartAsync();
        var watch = new WatchWrites();
        await using var links = new GrpcStageLinks("job-4", 1, 0, 0, null, receiver.Address, new StageMailboxes(), frameBytes: 64) { ClientInterceptor = watch };
        using var a = arange(0, 60, dtype: float32).reshape(3, 4, 5);
        await links.ForStep(0).SendActivationAsync(0, a, CancellationToken.None);
        await links.ForStep(0).SendActivationAsync(1, a, CancellationToken.None);
        var got = await receiver.Mailboxes.ReceiveAsync("job-4", 1, 0, 1, StageTensorKind.Activation, 0, 1, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(Enumerable.Range(0, 60).Select(i => (float)i), got.Values);
        Assert.Equal(8, watch.AcceptedAtWrite.Count); // 240 bytes in frames of 64: 4 a tensor
        Assert.All(watch.AcceptedAtWrite, Assert.True);
    }

    [Fact]
    public async Task A_write_whose_http2_stream_was_cut_fails_the_send_naming_the_stage_and_the_tensor()
    {
        await using var receiver = await StartAsync();
        await using var links = new GrpcStageLinks("job-5", 1, 0, 0, null, receiver.Address, new StageMailboxes()) { ClientInterceptor = new WatchWrites(cut: true) };
        using var activation = ones(2, 3, 4);
        var e = await Assert.ThrowsAsync<IOException>(() => links.ForStep(3).SendActivationAsync(2, activation, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains($"stage 1 ({receiver.Address})", e.Message);
        Assert.Contains("step 3 micro-batch 2", e.Message);
        Assert.Contains("The request was aborted", e.Message);
    }
}
