using System.Collections.Concurrent;
using Dtrain.Cluster;
using Dtrain.Collective;
using Dtrain.Distributed.Pipeline;
using Dtrain.Worker;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Pipeline stage links without sockets, for the workers of an <see cref="InMemoryWorkerPool"/>: the stages of one replica
/// of a job's generation share a group of in-memory point-to-point transports (ranks = stage indices, one mailbox per
/// sender), made when the first stage connects; the stages run the real <see cref="PeerStageLinks"/> over them. A stage
/// whose transport is disposed (its worker released the job) ends its neighbours' receives with an error.
/// </summary>
public sealed class InMemoryStageLinks : IStageLinkConnector
{
    private const int MaxPieceFloats = 64 * 1024;
    private readonly ConcurrentDictionary<(string Job, long Generation, int Replica), Transport[]> groups = new();

    public Task<IStageLinkSet> ConnectAsync(Assignment request, PipelineStageAssignment p, CancellationToken cancel)
    {
        var group = groups.GetOrAdd((request.JobId, request.Generation, p.Replica), key => Transport.Group(key.Job, key.Generation, p.Stages));
        return Task.FromResult<IStageLinkSet>(new PeerStageLinks(group[p.Stage], request.JobId, MaxPieceFloats));
    }

    private sealed class Transport : IPeerTransport
    {
        private Transport[] group = [];
        // From each neighbour stage (null for the others).
        private readonly RingMailbox?[] inbound;
        private int disposed;

        private Transport(string job, long generation, int rank, int world)
        {
            (Rank, WorldSize) = (rank, world);
            inbound = new RingMailbox?[world];
            foreach (var sender in new[] { rank - 1, rank + 1 }.Where(s => s >= 0 && s < world))
            {
                inbound[sender] = new RingMailbox(job, generation, rank, world, sender, PeerMessageKind.Tensor);
                inbound[sender]!.TryAttachInbound();
            }
        }

        public static Transport[] Group(string job, long generation, int stages)
        {
            var group = Enumerable.Range(0, stages).Select(s => new Transport(job, generation, s, stages)).ToArray();
            foreach (var t in group) t.group = group;
            return group;
        }

        public int Rank { get; }

        public int WorldSize { get; }

        public string DescribeRank(int rank) => $"stage {rank}";

        public string? LinkTo(int peer) => peer >= 0 && peer < WorldSize && Math.Abs(peer - Rank) == 1 ? "in-memory" : null;

        public ValueTask SendAsync(int peer, RingPiece piece, CancellationToken cancellationToken)
        {
            cancellationToken.ThrowIfCancellationRequested();
            ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
            var mailbox = group[peer].inbound[Rank] ?? throw new RingTransportException($"stage {Rank} has no link to stage {peer}", peer, DescribeRank(peer));
            try
            {
                mailbox.Deliver(RingPiece.CopyOf(piece.Tag, piece.Offset, piece.Pieces, piece.Bytes.Span).WithShape(piece.Shape));
            }
            catch (Exception ex) when (ex is InvalidOperationException or InvalidDataException)
            {
                throw new RingTransportException($"stage {peer} refused {piece.Tag}: {ex.Message}", peer, DescribeRank(peer), ex);
            }
            return ValueTask.CompletedTask;
        }

        public ValueTask<RingPiece> ReceiveAsync(int peer, RingTag tag, CancellationToken cancellationToken)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref disposed) != 0, this);
            var mailbox = inbound[peer] ?? throw new RingTransportException($"stage {Rank} has no link from stage {peer}", peer, DescribeRank(peer));
            return mailbox.ReceiveAsync(tag, ex => new RingTransportException($"cannot receive {tag} from stage {peer}: {ex.Message}", peer, DescribeRank(peer), ex), cancellationToken);
        }

        public ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref disposed, 1) != 0) return ValueTask.CompletedTask;
            foreach (var mailbox in inbound) mailbox?.Close(new ObjectDisposedException(nameof(InMemoryStageLinks), $"stage {Rank} left the pipeline"));
            // Its neighbours hear no more from it.
            foreach (var neighbour in group) neighbour.inbound[Rank]?.CompleteInbound(null);
            return ValueTask.CompletedTask;
        }
    }
}
