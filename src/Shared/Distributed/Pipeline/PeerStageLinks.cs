using System.Buffers;
using Dtrain.Collective;
using static TorchSharp.torch;

namespace Dtrain.Distributed.Pipeline;

/// <summary>A stage's links to its neighbouring stages for a whole job generation; <see cref="ForStep"/> gives one step's view.</summary>
public interface IStageLinkSet : IAsyncDisposable
{
    /// <summary>The links as seen by step <paramref name="step"/> (tensors are matched by step and micro-batch).</summary>
    IStageLinks ForStep(long step);

    /// <summary>How the tensors travel, as logs and metrics name it: "shm", "tcp", "tcp+tls", "grpc", "grpc+tls" (two names joined by "/" when the directions differ).</summary>
    string Transport { get; }
}

/// <summary>
/// One stage's links over the data plane's point-to-point seam (<see cref="IPeerTransport"/>, ranks = stage indices;
/// made by <see cref="DataPlaneStageLinks.ConnectStageLinksAsync"/>): activations go to stage + 1, activation gradients to
/// stage - 1, as <see cref="PeerMessageKind.Tensor"/> pieces tagged by <see cref="StageTensorTag"/> (step, activation|gradient,
/// micro-batch, piece) and carrying the tensor's shape. A tensor larger than the links' piece size
/// (<see cref="RingMailboxes.MaxPieceFloats"/>) travels as several pieces. Sending reads the contiguous CPU tensor's
/// own memory (no managed copy); receiving copies each piece once, straight into the new tensor's memory.
/// </summary>
public sealed class PeerStageLinks : IStageLinkSet
{
    private readonly IPeerTransport peers;
    private readonly string jobId;
    private readonly int stage;
    private readonly int maxPieceFloats;
    private readonly SemaphoreSlim toNext = new(1, 1);
    private readonly SemaphoreSlim toPrevious = new(1, 1);

    public PeerStageLinks(IPeerTransport peers, string jobId, int maxPieceFloats)
    {
        this.peers = peers ?? throw new ArgumentNullException(nameof(peers));
        this.jobId = jobId;
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPieceFloats, 1);
        this.maxPieceFloats = maxPieceFloats;
        stage = peers.Rank;
    }

    /// <summary>The underlying point-to-point transport (ranks = stage indices).</summary>
    public IPeerTransport Peers => peers;

    public string Transport
    {
        get
        {
            var kinds = new[] { stage + 1, stage - 1 }.Select(peers.LinkTo).OfType<string>().Select(k => k == "shared memory" ? "shm" : k).Distinct().ToList();
            return kinds.Count == 0 ? "" : string.Join("/", kinds);
        }
    }

    public IStageLinks ForStep(long step) => new StepLinks(this, step);

    private int Next => stage + 1 < peers.WorldSize ? stage + 1 : -1;

    private async Task SendAsync(StagePhase phase, long step, int micro, Tensor tensor, CancellationToken cancel)
    {
        var to = phase == StagePhase.Activation ? Next : stage - 1;
        var what = StageTensorTag.PhaseName(phase);
        if (to < 0 || peers.LinkTo(to) is null) throw new InvalidOperationException($"stage {stage} has no {(phase == StagePhase.Activation ? "next" : "previous")} stage to send a {what} to");
        using var cpu = tensor.to(CPU).contiguous();
        if (cpu.dtype != ScalarType.Float32) throw new InvalidOperationException($"stage {stage}: the {what} of step {step} micro-batch {micro} is {cpu.dtype}, stage links carry float32");
        var shape = cpu.shape;
        var count = cpu.numel();
        if (shape.Length is < 1 or > PieceFrame.MaxDims || count < 1 || count > PieceFrame.MaxTensorElements)
            throw new InvalidOperationException($"stage {stage}: the {what} of step {step} micro-batch {micro} has shape [{string.Join(", ", shape)}]; stage links carry 1 to {PieceFrame.MaxDims} dimensions and 1 to {PieceFrame.MaxTensorElements} values");
        var gate = phase == StagePhase.Activation ? toNext : toPrevious;
        await gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            using var memory = TensorMemory.Of(cpu);
            var pieces = (int)((count + maxPieceFloats - 1) / maxPieceFloats);
            for (var i = 0; i < pieces; i++)
            {
                var offset = (long)i * maxPieceFloats;
                var n = (int)Math.Min(maxPieceFloats, count - offset);
                using var piece = RingPiece.FromBytes(new StageTensorTag(step, phase, micro, i).ToWire(), offset, pieces,
                    memory.Memory.Slice((int)(offset * sizeof(float)), n * sizeof(float))).WithShape(shape);
                await peers.SendAsync(to, piece, cancel).ConfigureAwait(false);
            }
        }
        catch (RingTransportException e) when (!cancel.IsCancellationRequested)
        {
            throw new IOException($"job {jobId}: stage {stage} could not send the {what} of step {step} micro-batch {micro} to stage {to} ({peers.DescribeRank(to)}): {e.Message}", e);
        }
        finally
        {
            gate.Release();
        }
    }

    private async Task<Tensor> ReceiveAsync(StagePhase phase, long step, int micro, CancellationToken cancel)
    {
        var from = phase == StagePhase.Activation ? stage - 1 : Next;
        var what = StageTensorTag.PhaseName(phase);
        if (from < 0) throw new InvalidOperationException($"stage {stage} has no {(phase == StagePhase.Activation ? "previous" : "next")} stage to receive a {what} from");
        Tensor? result = null;
        try
        {
            var first = await peers.ReceiveAsync(from, new StageTensorTag(step, phase, micro, 0).ToWire(), cancel).ConfigureAwait(false);
            long[] shape;
            int pieces;
            long count;
            try
            {
                shape = first.Shape ?? throw new InvalidDataException($"{StageTensorTag.FromWire(first.Tag)} from stage {from} carries no shape");
                pieces = first.Pieces;
                count = shape.Aggregate(1L, (a, b) => a * b);
                if (pieces > count) throw new InvalidDataException($"{StageTensorTag.FromWire(first.Tag)} from stage {from}: {pieces} pieces for {count} values");
                result = empty(shape, ScalarType.Float32);
                Fill(result, first, 0, count);
            }
            finally
            {
                first.Dispose();
            }
            var filled = (long)first.Count;
            for (var i = 1; i < pieces; i++)
            {
                using var piece = await peers.ReceiveAsync(from, new StageTensorTag(step, phase, micro, i).ToWire(), cancel).ConfigureAwait(false);
                if (piece.Pieces != pieces || piece.Shape is not { } s || !s.AsSpan().SequenceEqual(shape))
                    throw new InvalidDataException($"{StageTensorTag.FromWire(piece.Tag)} from stage {from} says {piece.Pieces} pieces of shape [{string.Join(", ", piece.Shape ?? [])}], piece 0 said {pieces} of [{string.Join(", ", shape)}]");
                Fill(result, piece, filled, count);
                filled += piece.Count;
            }
            if (filled != count) throw new InvalidDataException($"the {what} of step {step} micro-batch {micro} from stage {from}: its pieces hold {filled} of the {count} values of shape [{string.Join(", ", shape)}]");
            var done = result;
            result = null;
            return done;
        }
        catch (RingTransportException e) when (!cancel.IsCancellationRequested)
        {
            throw new IOException($"job {jobId}: stage {stage} could not receive the {what} of step {step} micro-batch {micro} from stage {from} ({peers.DescribeRank(from)}): {e.Message}", e);
        }
        finally
        {
            result?.Dispose();
        }
    }

    /// <summary>Copies a piece into the tensor at its offset, which must be where the previous pieces ended.</summary>
    private static void Fill(Tensor tensor, RingPiece piece, long expectedOffset, long count)
    {
        if (piece.Offset != expectedOffset || piece.Offset + piece.Count > count)
            throw new InvalidDataException($"{StageTensorTag.FromWire(piece.Tag)}: {piece.Count} values at offset {piece.Offset}, expected offset {expectedOffset} of {count}");
        using var memory = TensorMemory.Of(tensor);
        piece.Bytes.Span.CopyTo(memory.Memory.Span.Slice((int)(piece.Offset * sizeof(float))));
    }

    public async ValueTask DisposeAsync()
    {
        await peers.DisposeAsync().ConfigureAwait(false);
        toNext.Dispose();
        toPrevious.Dispose();
    }

    private sealed class StepLinks(PeerStageLinks links, long step) : IStageLinks
    {
        public Task SendActivationAsync(int micro, Tensor activation, CancellationToken cancel) => links.SendAsync(StagePhase.Activation, step, micro, activation, cancel);
        public Task<Tensor> ReceiveActivationAsync(int micro, CancellationToken cancel) => links.ReceiveAsync(StagePhase.Activation, step, micro, cancel);
        public Task SendGradientAsync(int micro, Tensor gradient, CancellationToken cancel) => links.SendAsync(StagePhase.Gradient, step, micro, gradient, cancel);
        public Task<Tensor> ReceiveGradientAsync(int micro, CancellationToken cancel) => links.ReceiveAsync(StagePhase.Gradient, step, micro, cancel);
    }
}

/// <summary>
/// The bytes of a contiguous float32 CPU tensor as <see cref="Memory{T}"/> over its own storage (no copy), valid while
/// the tensor lives and the view is not disposed. TorchSharp exposes the storage's address
/// (<c>storage&lt;float&gt;().data_ptr()</c>) plus the tensor's element offset into it.
/// </summary>
internal sealed unsafe class TensorMemory : MemoryManager<byte>
{
    private readonly byte* pointer;
    private readonly int length;
    private readonly Storage<float> storage;

    private TensorMemory(Storage<float> storage, byte* pointer, int length)
    {
        this.storage = storage;
        this.pointer = pointer;
        this.length = length;
    }

    public static TensorMemory Of(Tensor tensor)
    {
        if (tensor.device_type != TorchSharp.DeviceType.CPU || !tensor.is_contiguous() || tensor.dtype != ScalarType.Float32)
            throw new ArgumentException("a contiguous float32 CPU tensor is required", nameof(tensor));
        var bytes = tensor.numel() * sizeof(float);
        if (bytes > int.MaxValue) throw new ArgumentException($"a tensor of {bytes} bytes is too large for one view", nameof(tensor));
        var storage = tensor.storage<float>();
        var start = (byte*)storage.data_ptr() + tensor.storage_offset() * sizeof(float);
        return new TensorMemory(storage, start, (int)bytes);
    }

    public override Span<byte> GetSpan() => new(pointer, length);

    public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) storage.Dispose();
    }
}
