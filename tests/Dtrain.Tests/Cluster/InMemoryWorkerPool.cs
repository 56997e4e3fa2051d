using System.Collections.Concurrent;
using Dtrain.Cluster;
using Dtrain.Collective;
using Dtrain.Distributed;
using Dtrain.Server;
using Dtrain.Worker;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Workers without gRPC or processes: each a real <see cref="WorkerRuntime"/> known by its address, reached through an
/// <see cref="InProcessWorkerHandle"/>. The ring of each job's generation is in memory (made when its first member
/// joins; one per stage for a pipeline's replicas), and so are a pipeline's stage links (<see cref="InMemoryStageLinks"/>); a worker takes a peer's state
/// straight from that peer's runtime. <see cref="StopAsync"/> makes a worker answer
/// nothing from then on, as one whose process died.
/// </summary>
public sealed class InMemoryWorkerPool(CoordinatorOptions options) : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, (WorkerSlot Slot, WorkerRuntime Runtime)> workers = new();
    private readonly ConcurrentDictionary<string, bool> stopped = new();
    private readonly ConcurrentDictionary<string, InProcessWorkerHandle> handles = new();
    private readonly Rings rings = new();
    private readonly InMemoryStageLinks stageLinks = new();

    public static string AddressOf(string id) => $"http://{id}.in-memory.invalid:1";

    /// <summary>A worker at <see cref="AddressOf"/>(<paramref name="id"/>).</summary>
    public void Add(string id, WorkerOptions? workerOptions = null)
    {
        var slot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        var runtime = new WorkerRuntime(slot, rings, new Peers(this), workerOptions ?? new WorkerOptions(), new Dtrain.Distributed.Pipeline.StageMailboxes(), NullLogger<WorkerRuntime>.Instance,
            stageLinks: stageLinks);
        workers[AddressOf(id)] = (slot, runtime);
    }

    /// <summary>The handle the coordinator's side uses for a worker of this pool (one per worker).</summary>
    public InProcessWorkerHandle Connect(WorkerRecord w) =>
        handles.GetOrAdd(w.Address, address => new InProcessWorkerHandle(w, workers[address].Runtime, () => stopped.ContainsKey(address), options));

    /// <summary>From now on the worker answers nothing (calls fail as unreachable), and its job is dropped as a dead process's would be.</summary>
    public async Task StopAsync(string id)
    {
        stopped[AddressOf(id)] = true;
        await workers[AddressOf(id)].Slot.ReleaseAsync("stopped by the test");
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var (slot, _) in workers.Values) await slot.ReleaseAsync("test over");
    }

    private sealed class Rings : IRingConnector
    {
        // By job, generation and members: a pipeline of D replicas has one ring per stage in each generation.
        private readonly ConcurrentDictionary<(string Job, long Generation, string Members), IReadOnlyList<InMemoryRingTransport>> rings = new();

        public Task<RingConnection> ConnectAsync(RingMembership membership, CancellationToken cancel)
        {
            if (membership.World == 1) return Task.FromResult(new RingConnection(LocalReducer.Instance));
            var members = string.Join(" ", membership.Peers.Select(p => p.Address));
            var ring = rings.GetOrAdd((membership.JobId, membership.Generation, members), _ => InMemoryRingTransport.CreateRing(membership.World));
            var transport = ring[membership.Rank];
            return Task.FromResult(new RingConnection(new Reducer(new RingAllReduce(transport)), transport.DisposeAsync));
        }
    }

    private sealed class Reducer(RingAllReduce ring) : IGradientReducer
    {
        public int WorldSize => ring.WorldSize;

        public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => ring.SumAsync(buffer, operation, cancel);

        public Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancel) => ring.SumAsync(buffer, operation, compression, cancel);
    }

    private sealed class Peers(InMemoryWorkerPool pool) : IPeerState
    {
        public Task<byte[]> FetchStateAsync(string address, string workerId, string certificateSha256, string jobId, long step, CancellationToken cancel)
        {
            if (pool.stopped.ContainsKey(address) || !pool.workers.TryGetValue(address, out var peer)) throw new IOException($"peer {workerId} at {address} unreachable");
            return peer.Runtime.GetStateAsync(new StateSnapshot(jobId, step), cancel);
        }
    }
}
