using Dtrain.Collective;
using Dtrain.Distributed;
using Dtrain.Protos.Worker;
using Dtrain.Server;
using Dtrain.Worker;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A job's workers without gRPC: the real worker runtime (<see cref="WorkerRuntime"/>, what the gRPC service adapts)
/// of each rank called directly, its ring in memory. A step driver runs on it exactly as on a cluster.
/// </summary>
public sealed class InMemoryJobWorkers : IJobWorkers, IAsyncDisposable
{
    private readonly WorkerSlot[] slots;
    private readonly WorkerRuntime[] services;

    public IReadOnlyList<(string Id, string Address)> Members { get; }

    /// <param name="options">Each rank's worker options (default: the defaults), e.g. a fault drill on one rank.</param>
    public InMemoryJobWorkers(int world, Func<int, WorkerOptions>? options = null)
    {
        var connector = new Connector(world);
        slots = [.. Enumerable.Range(0, world).Select(_ => new WorkerSlot(NullLogger<WorkerSlot>.Instance))];
        services = [.. slots.Select((s, rank) => new WorkerRuntime(s, connector, new NoPeers(), options?.Invoke(rank) ?? new WorkerOptions(), new Dtrain.Distributed.Pipeline.StageMailboxes(), NullLogger<WorkerRuntime>.Instance))];
        Members = [.. Enumerable.Range(0, world).Select(r => ($"mem{r}", $"memory://{r}"))];
    }

    public Task<AssignReply[]> AssignAsync(Func<int, AssignRequest> request, CancellationToken cancel) =>
        Task.WhenAll(services.Select((s, rank) => s.AssignAsync(request(rank), cancel)));

    public Task LoadShardsAsync(IReadOnlyList<IReadOnlyList<ShardChunk>> perRank, long step, CancellationToken cancel) =>
        Task.WhenAll(services.Select((s, rank) => s.LoadShardAsync(perRank[rank].ToAsyncEnumerable(), cancel)));

    public Task<RunStepReply[]> RunStepAsync(RunStepRequest request, double timeoutSeconds, CancellationToken cancel) =>
        Task.WhenAll(services.Select(s => s.RunStepAsync(request, cancel)));

    public Task<EvaluateReply> EvaluateAsync(int rank, EvaluateRequest request, long step, CancellationToken cancel) =>
        services[rank].EvaluateAsync(request, cancel);

    public Task<byte[]> GetStateAsync(int rank, GetStateRequest request, long step, CancellationToken cancel) =>
        services[rank].GetStateAsync(request, cancel);

    public Task<ApplyStepReply[]> ApplyStepAsync(ApplyStepRequest request, CancellationToken cancel) =>
        Task.WhenAll(services.Select(s => s.ApplyStepAsync(request, cancel)));

    public async Task<IReadOnlyList<NamedTensor>> GetStageParametersAsync(int rank, GetStateRequest request, long step, CancellationToken cancel) =>
        await services[rank].GetStageParametersAsync(request, cancel);

    public Task<LoadStateReply[]> LoadStateAsync(string jobId, Func<int, IEnumerable<NamedTensor>> perRank, long step, CancellationToken cancel) =>
        Task.WhenAll(services.Select((s, rank) => s.LoadStateAsync(perRank(rank).Select(t => new LoadStateChunk { JobId = jobId, Tensor = t }).ToAsyncEnumerable(), cancel)));

    public async ValueTask DisposeAsync()
    {
        foreach (var s in slots) await s.ReleaseAsync("test over");
    }

    private sealed class Connector(int world) : IRingConnector
    {
        private readonly IReadOnlyList<InMemoryRingTransport> ring = InMemoryRingTransport.CreateRing(world);

        public Task<RingConnection> ConnectAsync(AssignRequest request, CancellationToken cancel)
        {
            if (request.WorldSize == 1) return Task.FromResult(new RingConnection(LocalReducer.Instance));
            var reduce = new RingAllReduce(ring[request.Rank]);
            return Task.FromResult(new RingConnection(new Reducer(reduce)));
        }
    }

    private sealed class Reducer(RingAllReduce ring) : IGradientReducer
    {
        public int WorldSize => ring.WorldSize;

        public Task SumAsync(Memory<float> buffer, long operation, CancellationToken cancel) => ring.SumAsync(buffer, operation, cancel);

        public Task SumAsync(Memory<float> buffer, long operation, RingCompression compression, CancellationToken cancel) => ring.SumAsync(buffer, operation, compression, cancel);
    }

    private sealed class NoPeers : IPeerState
    {
        public Task<byte[]> FetchStateAsync(string address, string workerId, string certificateSha256, string jobId, long step, CancellationToken cancel) => throw new NotSupportedException("in-memory workers do not change membership");
    }
}
