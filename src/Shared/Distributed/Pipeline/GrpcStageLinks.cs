using Dtrain.Collective;
using Dtrain.Protos.Pipeline;
using Google.Protobuf;
using Dtrain.Rpc;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using static TorchSharp.torch;

namespace Dtrain.Distributed.Pipeline;

/// <summary>TLS of a stage's links: this worker's certificate and the CA, and whose certificates the previous and next stage must present.</summary>
public sealed record StageLinkSecurity(ClusterTls Tls, ExpectedPeer? Previous, ExpectedPeer? Next);

/// <summary>
/// One stage's links to its neighbours over gRPC: a long-lived StageLink stream to the next stage (activations)
/// and one to the previous stage (activation gradients), opened on first use; what arrives for this stage is read
/// from the worker's <see cref="StageMailboxes"/>. A failed send names the peer stage and its address. With
/// a <see cref="StageLinkSecurity"/> (TLS), streams go out with this worker's certificate to the neighbours' pinned
/// certificates only, and only the neighbours' streams are accepted for this stage.
/// </summary>
public sealed class GrpcStageLinks : IStageLinkSet
{
    private readonly string jobId;
    private readonly long generation;
    private readonly int replica;
    private readonly int stage;
    private readonly StageMailboxes mailboxes;
    private readonly int frameBytes;
    private readonly Outbound? toNext;
    private readonly Outbound? toPrevious;
    private readonly bool tls;

    public GrpcStageLinks(string jobId, long generation, int replica, int stage, string? previous, string? next, StageMailboxes mailboxes,
        int frameBytes = 1 << 20, StageLinkSecurity? security = null, CollectiveTimeouts? timeouts = null)
    {
        var closeGrace = (timeouts ?? CollectiveTimeouts.Default).Validated().StageStreamCloseGrace;
        (this.jobId, this.generation, this.replica, this.stage, this.mailboxes, this.frameBytes) = (jobId, generation, replica, stage, mailboxes, frameBytes);
        tls = security is not null;
        if (security is not null)
        {
            if (previous is not null) mailboxes.Expect(jobId, generation, replica, stage - 1, stage, security.Previous ?? throw new ArgumentException($"stage {stage}: no identity for the previous stage"));
            if (next is not null) mailboxes.Expect(jobId, generation, replica, stage + 1, stage, security.Next ?? throw new ArgumentException($"stage {stage}: no identity for the next stage"));
        }
        toNext = next is null ? null : new Outbound(next, stage + 1, security?.Tls, security?.Next, closeGrace);
        toPrevious = previous is null ? null : new Outbound(previous, stage - 1, security?.Tls, security?.Previous, closeGrace);
    }

    /// <summary>The links as seen by step <paramref name="step"/> (tensors are matched by step and micro-batch).</summary>
    public IStageLinks ForStep(long step) => new StepLinks(this, step);

    /// <summary>"grpc", or "grpc+tls" with cluster TLS.</summary>
    public string Transport => DataTransports.Describe(DataTransport.Grpc, tls);

    private async Task SendAsync(Outbound? to, StageTensorKind kind, long step, int micro, Tensor tensor, CancellationToken cancel)
    {
        if (to is null) throw new InvalidOperationException($"stage {stage} has no {(kind == StageTensorKind.Activation ? "next" : "previous")} stage to send a {kind} to");
        using var cpu = tensor.to(CPU).contiguous();
        if (cpu.dtype != ScalarType.Float32) throw new InvalidOperationException($"stage {stage}: the {kind.ToString().ToLowerInvariant()} of step {step} micro-batch {micro} is {cpu.dtype}, stage links carry float32");
        // The frames are cut straight from the tensor's memory (one copy, into each protobuf frame).
        using var memory = cpu.numel() == 0 ? null : TensorMemory.Of(cpu);
        var bytes = memory?.Memory ?? Memory<byte>.Empty;
        await to.Gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var call = to.Call ??= await OpenAsync(to, cancel).ConfigureAwait(false);
            for (var offset = 0; offset < bytes.Length || offset == 0; offset += frameBytes)
            {
                var n = Math.Min(frameBytes, bytes.Length - offset);
                var frame = new TensorFrame
                {
                    JobId = jobId, Generation = generation, Replica = replica, FromStage = stage, ToStage = to.Stage,
                    Kind = (int)kind, Step = step, MicroBatch = micro, TotalBytes = bytes.Length, Data = ByteString.CopyFrom(bytes.Span.Slice(offset, n)),
                };
                if (offset == 0) frame.Shape.AddRange(cpu.shape);
                await call.RequestStream.WriteAsync(frame, cancel).ConfigureAwait(false);
                if (n == 0) break;
            }
        }
        catch (Exception e) when (e is RpcException or IOException or HttpRequestException or InvalidOperationException && !cancel.IsCancellationRequested)
        {
            // HttpRequestException: the HTTP/2 stream was cut under the write (e.g. "The request was aborted").
            throw new IOException($"job {jobId}: stage {stage} could not send the {kind.ToString().ToLowerInvariant()} of step {step} micro-batch {micro} to stage {to.Stage} ({to.Address}): {e.Message}", e);
        }
        finally
        {
            to.Gate.Release();
        }
    }

    /// <summary>
    /// Opens the link's stream and waits until the receiving stage accepted it (<see cref="StageLinkService.AcceptedHeader"/>)
    /// before any frame is written: a request the server has not answered yet is replayed by .NET's HTTP/2 client on a new
    /// connection when the old one is closed (GOAWAY), and grpc-dotnet replays it without the frames already written
    /// (Dtrain.Rpc.ClientStreams) — the receiver would wait for tensors this stage believes sent. An answered one is not replayed.
    /// </summary>
    private async Task<AsyncClientStreamingCall<TensorFrame, SendReply>> OpenAsync(Outbound to, CancellationToken cancel)
    {
        var invoker = ClientInterceptor is null ? to.Channel.CreateCallInvoker() : to.Channel.Intercept(ClientInterceptor);
        var call = new StageLink.StageLinkClient(invoker).Send(cancellationToken: to.Closing.Token);
        try
        {
            var headers = await call.ResponseHeadersAsync.WaitAsync(cancel).ConfigureAwait(false);
            if (headers.GetValue(StageLinkService.AcceptedHeader) == "accepted") return call;
            // A trailers-only answer: its status says why the link was refused.
            await call.ResponseAsync.WaitAsync(cancel).ConfigureAwait(false);
            throw new InvalidOperationException("the receiving stage ended the link without accepting it");
        }
        catch
        {
            call.Dispose();
            throw;
        }
    }

    /// <summary>Tests: an interceptor on the links' calls (e.g. to watch or cut their writes).</summary>
    internal Interceptor? ClientInterceptor { get; init; }

    private async Task<Tensor> ReceiveAsync(StageTensorKind kind, long step, int micro, CancellationToken cancel)
    {
        var t = await mailboxes.ReceiveAsync(jobId, generation, replica, stage, kind, step, micro, cancel).ConfigureAwait(false);
        return t.ToTensor();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var o in new[] { toNext, toPrevious }.OfType<Outbound>()) await o.DisposeAsync().ConfigureAwait(false);
        mailboxes.Forget(jobId, generation);
    }

    private sealed class StepLinks(GrpcStageLinks links, long step) : IStageLinks
    {
        public Task SendActivationAsync(int micro, Tensor activation, CancellationToken cancel) => links.SendAsync(links.toNext, StageTensorKind.Activation, step, micro, activation, cancel);
        public Task<Tensor> ReceiveActivationAsync(int micro, CancellationToken cancel) => links.ReceiveAsync(StageTensorKind.Activation, step, micro, cancel);
        public Task SendGradientAsync(int micro, Tensor gradient, CancellationToken cancel) => links.SendAsync(links.toPrevious, StageTensorKind.Gradient, step, micro, gradient, cancel);
        public Task<Tensor> ReceiveGradientAsync(int micro, CancellationToken cancel) => links.ReceiveAsync(StageTensorKind.Gradient, step, micro, cancel);
    }

    private sealed class Outbound(string address, int stage, ClusterTls? tls, ExpectedPeer? expected, TimeSpan closeGrace) : IAsyncDisposable
    {
        public string Address { get; } = address;
        public int Stage { get; } = stage;
        public GrpcChannel Channel { get; } = Channels.Create(address, tls, expected ?? ExpectedPeer.AnyMember, new GrpcChannelOptions { MaxSendMessageSize = 64 << 20 });
        public SemaphoreSlim Gate { get; } = new(1, 1);
        public CancellationTokenSource Closing { get; } = new();
        public AsyncClientStreamingCall<TensorFrame, SendReply>? Call { get; set; }

        public async ValueTask DisposeAsync()
        {
            if (Call is { } call)
            {
                try
                {
                    await call.RequestStream.CompleteAsync().ConfigureAwait(false);
                    await call.ResponseAsync.WaitAsync(closeGrace).ConfigureAwait(false);
                }
                catch (Exception e) when (e is RpcException or TimeoutException or InvalidOperationException)
                {
                    // The peer is gone or already closed the stream; nothing left to deliver.
                }
                call.Dispose();
            }
            await Closing.CancelAsync().ConfigureAwait(false);
            Closing.Dispose();
            Channel.Dispose();
            Gate.Dispose();
        }
    }
}
