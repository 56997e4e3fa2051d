using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Dtrain.Protos.Pipeline;
using Dtrain.Rpc;
using Grpc.Core;

namespace Dtrain.Distributed.Pipeline;

/// <summary>What a stage receives: activations (from the previous stage) and activation gradients (from the next one).</summary>
public enum StageTensorKind
{
    Activation = 0,
    Gradient = 1,
}

/// <summary>A received tensor: float32 values and their shape.</summary>
public sealed record StageTensor(long[] Shape, float[] Values)
{
    public TorchSharp.torch.Tensor ToTensor() => TorchSharp.torch.tensor(Values, Shape);
}

/// <summary>
/// The receiving side of stage links on one worker: tensors that arrived, by (job, generation, replica, stage, kind,
/// step, micro-batch), and the stages waiting for them. A receive may come before or after the tensor arrives.
/// </summary>
public sealed class StageMailboxes
{
    private readonly ConcurrentDictionary<(string Job, long Generation, int Replica, int Stage, StageTensorKind Kind, long Step, int Micro), TaskCompletionSource<StageTensor>> slots = new();
    private readonly ConcurrentDictionary<(string Job, long Generation), Exception> closed = new();
    private readonly ConcurrentDictionary<(string Job, long Generation, int Replica, int From, int To), ExpectedPeer> senders = new();

    /// <summary>With TLS: the link from stage <paramref name="fromStage"/> to <paramref name="toStage"/> of a job is accepted only from <paramref name="peer"/>.</summary>
    public void Expect(string job, long generation, int replica, int fromStage, int toStage, ExpectedPeer peer) =>
        senders[(job, generation, replica, fromStage, toStage)] = peer;

    /// <summary>Why a link carrying frames (job, generation, replica, from → to) from <paramref name="peer"/> is refused, or null when it is that link's expected sender.</summary>
    public string? Refusal(string job, long generation, int replica, int fromStage, int toStage, PeerIdentity peer) =>
        senders.TryGetValue((job, generation, replica, fromStage, toStage), out var expected)
            ? expected.Mismatch(peer)
            : $"no stage on this worker expects a link from stage {fromStage} to stage {toStage} of job {job}/{generation} replica {replica}";

    private TaskCompletionSource<StageTensor> Slot(string job, long generation, int replica, int stage, StageTensorKind kind, long step, int micro) =>
        slots.GetOrAdd((job, generation, replica, stage, kind, step, micro), _ => new TaskCompletionSource<StageTensor>(TaskCreationOptions.RunContinuationsAsynchronously));

    public void Deliver(string job, long generation, int replica, int stage, StageTensorKind kind, long step, int micro, StageTensor tensor)
    {
        if (!Slot(job, generation, replica, stage, kind, step, micro).TrySetResult(tensor))
            throw new InvalidDataException($"job {job}: {kind} of step {step} micro-batch {micro} for stage {stage} arrived twice");
    }

    public async Task<StageTensor> ReceiveAsync(string job, long generation, int replica, int stage, StageTensorKind kind, long step, int micro, CancellationToken cancel)
    {
        if (closed.TryGetValue((job, generation), out var why)) throw why;
        var key = (job, generation, replica, stage, kind, step, micro);
        try
        {
            return await Slot(job, generation, replica, stage, kind, step, micro).Task.WaitAsync(cancel).ConfigureAwait(false);
        }
        finally
        {
            slots.TryRemove(key, out _);
        }
    }

    /// <summary>Fails every receive of a job (its peer went away, or the job was released).</summary>
    public void Close(string job, long generation, Exception reason)
    {
        closed[(job, generation)] = reason;
        foreach (var (key, slot) in slots)
            if (key.Job == job && key.Generation == generation) slot.TrySetException(reason);
    }

    /// <summary>Forgets a finished job.</summary>
    public void Forget(string job, long generation)
    {
        closed.TryRemove((job, generation), out _);
        foreach (var key in slots.Keys.Where(k => k.Job == job && k.Generation == generation).ToList()) slots.TryRemove(key, out _);
        foreach (var key in senders.Keys.Where(k => k.Job == job && k.Generation == generation).ToList()) senders.TryRemove(key, out _);
    }
}

/// <summary>
/// The StageLink service: reassembles the frames of each incoming stream into tensors and delivers them. Every frame
/// of a stream must belong to the same link (job, generation, replica, from-stage, to-stage); with TLS the stream is
/// accepted only from the worker whose certificate that link's receiving stage expects (<see cref="StageMailboxes.Expect"/>).
/// </summary>
public sealed class StageLinkService(StageMailboxes mailboxes) : StageLink.StageLinkBase
{
    /// <summary>
    /// The response header a receiving stage sends as soon as a link's stream reaches it, before any frame: the sending
    /// stage writes its first frame only once it has it (<see cref="GrpcStageLinks"/>).
    /// </summary>
    internal const string AcceptedHeader = "dtrain-link";

    public override async Task<SendReply> Send(IAsyncStreamReader<TensorFrame> requestStream, ServerCallContext context)
    {
        // The stream reached this worker: say so at once. A request whose HEADERS the server has answered is never
        // replayed by .NET's HTTP/2 client when the connection is closed (GOAWAY) — a replay of a stream the sender
        // had written frames to would arrive without them (Dtrain.Rpc.ClientStreams), and the tensors would be lost
        // while the sender believes them sent.
        await context.WriteResponseHeadersAsync(new Metadata { { AcceptedHeader, "accepted" } }).ConfigureAwait(false);
        long received = 0;
        TensorFrame? head = null;
        float[]? values = null;
        var filled = 0L;
        string? job = null;
        long generation = 0;
        (string Job, long Generation, int Replica, int From, int To)? link = null;
        try
        {
            await foreach (var f in requestStream.ReadAllAsync(context.CancellationToken).ConfigureAwait(false))
            {
                var frameLink = (f.JobId, f.Generation, f.Replica, f.FromStage, f.ToStage);
                if (link is null)
                {
                    if (PeerIdentity.Of(context) is { } peer && mailboxes.Refusal(f.JobId, f.Generation, f.Replica, f.FromStage, f.ToStage, peer) is { } refused)
                        throw new RpcException(new Status(StatusCode.PermissionDenied,
                            $"job {f.JobId}/{f.Generation}: a link claiming to be stage {f.FromStage} → stage {f.ToStage} of replica {f.Replica} is refused: {refused}"));
                    link = frameLink;
                }
                else if (link != frameLink)
                {
                    throw new RpcException(new Status(StatusCode.InvalidArgument,
                        $"a frame of job {f.JobId}/{f.Generation} replica {f.Replica} stage {f.FromStage} → {f.ToStage} on the stream of job {link.Value.Job}/{link.Value.Generation} replica {link.Value.Replica} stage {link.Value.From} → {link.Value.To}"));
                }
                (job, generation) = (f.JobId, f.Generation);
                if (head is null)
                {
                    if (f.TotalBytes < 0 || f.TotalBytes % sizeof(float) != 0 || f.TotalBytes > int.MaxValue * 4L)
                        throw new RpcException(new Status(StatusCode.InvalidArgument, $"tensor of {f.TotalBytes} bytes is not a whole number of float32 values"));
                    var elements = f.Shape.Aggregate(1L, (a, b) => b < 0 ? -1 : a * b);
                    if (f.Shape.Count == 0 || elements * sizeof(float) != f.TotalBytes)
                        throw new RpcException(new Status(StatusCode.InvalidArgument, $"tensor shape [{string.Join(", ", f.Shape)}] does not hold {f.TotalBytes} bytes"));
                    if (f.Kind is not (0 or 1)) throw new RpcException(new Status(StatusCode.InvalidArgument, $"tensor kind {f.Kind} is neither 0 (activation) nor 1 (gradient)"));
                    head = f;
                    values = new float[f.TotalBytes / sizeof(float)];
                    filled = 0;
                }
                if (filled + f.Data.Length > head.TotalBytes)
                    throw new RpcException(new Status(StatusCode.InvalidArgument, $"tensor of step {head.Step} micro-batch {head.MicroBatch}: more than the announced {head.TotalBytes} bytes"));
                f.Data.Span.CopyTo(MemoryMarshal.AsBytes(values.AsSpan())[(int)filled..]);
                filled += f.Data.Length;
                if (filled == head.TotalBytes)
                {
                    mailboxes.Deliver(head.JobId, head.Generation, head.Replica, head.ToStage, (StageTensorKind)head.Kind, head.Step, head.MicroBatch, new StageTensor([.. head.Shape], values!));
                    received++;
                    head = null;
                    values = null;
                }
            }
        }
        catch (Exception e) when (job is not null && e is not RpcException)
        {
            mailboxes.Close(job, generation, new IOException($"job {job}: the link from a neighbouring stage broke: {e.Message}", e));
            throw;
        }
        if (head is not null)
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"stream ended inside a tensor (step {head.Step} micro-batch {head.MicroBatch}: {filled} of {head.TotalBytes} bytes)"));
        return new SendReply { TensorsReceived = received };
    }
}
