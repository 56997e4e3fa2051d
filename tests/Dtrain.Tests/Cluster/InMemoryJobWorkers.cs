using Dtrain.Collective;
using Dtrain.Distributed;
using Dtrain.Protos.Worker;
using Dtrain.Server;
using Dtrain.Worker;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A job's workers without gRPC: the real worker service (<see cref="WorkerControlService"/>) of each rank called
/// directly, its ring in memory. A step driver runs on it exactly as on a cluster.
/// </summary>
public sealed class InMemoryJobWorkers : IJobWorkers, IAsyncDisposable
{
    private readonly WorkerSlot[] slots;
    private readonly WorkerControlService[] services;

    public IReadOnlyList<(string Id, string Address)> Members { get; }

    public InMemoryJobWorkers(int world)
    {
        var connector = new Connector(world);
        slots = [.. Enumerable.Range(0, world).Select(_ => new WorkerSlot(NullLogger<WorkerSlot>.Instance))];
        services = [.. slots.Select(s => new WorkerControlService(s, connector, new WorkerOptions(), new Dtrain.Distributed.Pipeline.StageMailboxes(), NullLogger<WorkerControlService>.Instance))];
        Members = [.. Enumerable.Range(0, world).Select(r => ($"mem{r}", $"memory://{r}"))];
    }

    public Task<AssignReply[]> AssignAsync(Func<int, AssignRequest> request, CancellationToken cancel) =>
        Task.WhenAll(services.Select((s, rank) => s.Assign(request(rank), new Context(cancel))));

    public Task LoadShardsAsync(IReadOnlyList<IReadOnlyList<ShardChunk>> perRank, long step, CancellationToken cancel) =>
        Task.WhenAll(services.Select((s, rank) => s.LoadShard(new Reader<ShardChunk>(perRank[rank]), new Context(cancel))));

    public Task<RunStepReply[]> RunStepAsync(RunStepRequest request, double timeoutSeconds, CancellationToken cancel) =>
        Task.WhenAll(services.Select(s => s.RunStep(request, new Context(cancel))));

    public Task<EvaluateReply> EvaluateAsync(int rank, EvaluateRequest request, long step, CancellationToken cancel) =>
        services[rank].Evaluate(request, new Context(cancel));

    public async Task<byte[]> GetStateAsync(int rank, GetStateRequest request, long step, CancellationToken cancel)
    {
        var writer = new Writer<StateChunk>();
        await services[rank].GetState(request, writer, new Context(cancel));
        using var ms = new MemoryStream();
        foreach (var c in writer.Written) c.Data.WriteTo(ms);
        return ms.ToArray();
    }

    public Task<ApplyStepReply[]> ApplyStepAsync(ApplyStepRequest request, CancellationToken cancel) =>
        Task.WhenAll(services.Select(s => s.ApplyStep(request, new Context(cancel))));

    public async Task<IReadOnlyList<NamedTensor>> GetStageParametersAsync(int rank, GetStateRequest request, long step, CancellationToken cancel)
    {
        var writer = new Writer<NamedTensor>();
        await services[rank].GetStageParameters(request, writer, new Context(cancel));
        return writer.Written;
    }

    public Task<LoadStateReply[]> LoadStateAsync(string jobId, Func<int, IEnumerable<NamedTensor>> perRank, long step, CancellationToken cancel) =>
        Task.WhenAll(services.Select((s, rank) => s.LoadState(new Reader<LoadStateChunk>([.. perRank(rank).Select(t => new LoadStateChunk { JobId = jobId, Tensor = t })]), new Context(cancel))));

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
        public Task SumAsync(float[] buffer, long operation, CancellationToken cancel) => ring.SumAsync(buffer, operation, cancel);
    }

    private sealed class Reader<T>(IReadOnlyList<T> items) : IAsyncStreamReader<T>
    {
        private int next = -1;
        public T Current => items[next];
        public Task<bool> MoveNext(CancellationToken cancellationToken) => Task.FromResult(++next < items.Count);
    }

    private sealed class Writer<T> : IServerStreamWriter<T>
    {
        public List<T> Written { get; } = [];
        public WriteOptions? WriteOptions { get; set; }
        public Task WriteAsync(T message)
        {
            Written.Add(message);
            return Task.CompletedTask;
        }
    }

    private sealed class Context(CancellationToken cancel) : ServerCallContext
    {
        protected override string MethodCore => "in-memory";
        protected override string HostCore => "localhost";
        protected override string PeerCore => "in-memory";
        protected override DateTime DeadlineCore => DateTime.MaxValue;
        protected override Metadata RequestHeadersCore { get; } = [];
        protected override CancellationToken CancellationTokenCore => cancel;
        protected override Metadata ResponseTrailersCore { get; } = [];
        protected override Status StatusCore { get; set; }
        protected override WriteOptions? WriteOptionsCore { get; set; }
        protected override AuthContext AuthContextCore { get; } = new(null, []);
        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) => throw new NotSupportedException();
        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
    }
}
