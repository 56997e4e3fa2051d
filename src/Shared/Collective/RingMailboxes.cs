using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Collective;

/// <summary>
/// The rings this worker takes part in, one mailbox per job (its current generation). Register it as a singleton
/// (done by <see cref="CollectiveHosting.AddDtrainCollective(IServiceCollection, int)"/>).
/// </summary>
public sealed class RingMailboxes(int maxPieceFloats = RingAllReduce.DefaultMaxPieceFloats)
{
    private readonly Lock gate = new();
    private readonly Dictionary<string, RingMailbox> current = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> newest = new(StringComparer.Ordinal);

    /// <summary>Largest piece accepted from a neighbour, in floats; must match the senders' <see cref="RingAllReduce.MaxPieceFloats"/>.</summary>
    public int MaxPieceFloats { get; } = maxPieceFloats > 0 ? maxPieceFloats : throw new ArgumentOutOfRangeException(nameof(maxPieceFloats));

    /// <summary>
    /// Registers the mailbox of channel <paramref name="jobId"/> (a job's ring, or
    /// a pipeline stage link's channel: <c>StageChannels</c>) at <paramref name="generation"/>, superseding older generations of that channel.
    /// </summary>
    internal RingMailbox Register(string jobId, long generation, int rank, int worldSize, Rpc.ExpectedPeer? expectedLeft = null, int? sender = null,
        PeerMessageKind kind = PeerMessageKind.AllReduce)
    {
        RingMailbox? superseded = null;
        RingMailbox mailbox;
        lock (gate)
        {
            if (this.newest.TryGetValue(jobId, out var newest) && newest >= generation)
                throw new InvalidOperationException($"ring {jobId}: generation {newest} is already registered here, cannot register generation {generation}");
            this.current.Remove(jobId, out superseded);
            mailbox = new RingMailbox(jobId, generation, rank, worldSize, sender, kind) { ExpectedLeft = expectedLeft };
            this.current[jobId] = mailbox;
            this.newest[jobId] = generation;
        }
        superseded?.Close(new InvalidOperationException($"ring {jobId}/{superseded.Generation} superseded by generation {generation}"));
        return mailbox;
    }

    internal void Unregister(RingMailbox mailbox, Exception reason)
    {
        lock (gate)
        {
            if (this.current.TryGetValue(mailbox.JobId, out var current) && current == mailbox) this.current.Remove(mailbox.JobId);
        }
        mailbox.Close(reason);
    }

    /// <summary>The open mailbox of that ring, or null, a refusal kind (not-registered / superseded / closed) and why.</summary>
    internal (RingMailbox? Mailbox, string? Refusal, string? Detail) Find(string jobId, long generation)
    {
        lock (gate)
        {
            var newest = this.newest.TryGetValue(jobId, out var n) ? n : long.MinValue;
            if (generation < newest) return (null, "superseded", $"ring {jobId}/{generation} is superseded by generation {newest} on this worker");
            if (this.current.TryGetValue(jobId, out var mailbox) && mailbox.Generation == generation && mailbox.ClosedReason is null) return (mailbox, null, null);
            if (generation == newest) return (null, "closed", $"ring {jobId}/{generation} is closed on this worker");
            return (null, "not-registered", $"no ring {jobId}/{generation} is registered on this worker (yet)");
        }
    }
}
