using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Dtrain.Rpc;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// The coordinator's client-streaming calls to a worker (LoadShard, LoadState) whose request stream reaches the worker
/// with fewer messages than were sent — all of them lost when .NET's HTTP/2 client replays the request on a new
/// connection after a GOAWAY (<see cref="ClientStreams"/>, found for uploads: UploadStreamTests). Such a call must
/// never be taken as done: the worker refuses an empty stream (Unavailable, empty-stream) and the coordinator sends it
/// again; a stream that lost only some messages fails the job naming the worker, the call and the counts.
/// </summary>
public class WorkerStreamTests
{
    /// <summary>
    /// A worker's server interceptor for the client-streaming method ending in <paramref name="method"/>: the first
    /// <paramref name="emptied"/> calls get a stream without messages (read, then dropped, as the replay arrives); with
    /// <paramref name="dropIndex"/>, every call loses its message of that index instead (a short stream).
    /// </summary>
    public sealed class LoseMessages(string method, int emptied, int dropIndex = -1) : Interceptor
    {
        int calls;
        public int Calls => Volatile.Read(ref calls);

        public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream,
            ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
        {
            if (!context.Method.EndsWith(method, StringComparison.Ordinal)) return await continuation(requestStream, context);
            if (Interlocked.Increment(ref calls) <= emptied)
            {
                while (await requestStream.MoveNext(context.CancellationToken)) { }
                return await continuation(new Skipping<TRequest>(requestStream, _ => true), context);
            }
            if (dropIndex < 0) return await continuation(requestStream, context);
            return await continuation(new Skipping<TRequest>(requestStream, i => i == dropIndex), context);
        }
    }

    /// <summary>The messages of <paramref name="inner"/> without those whose index <paramref name="skip"/> says.</summary>
    sealed class Skipping<T>(IAsyncStreamReader<T> inner, Func<int, bool> skip) : IAsyncStreamReader<T>
    {
        int index = -1;
        bool ended;

        public T Current => inner.Current;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            while (!ended)
            {
                if (!await inner.MoveNext(cancellationToken))
                {
                    ended = true;
                    break;
                }
                if (!skip(++index)) return true;
            }
            return false;
        }
    }

    /// <summary>A valid assignment of a one-worker char LM job "j" over the tokens &lt;pad&gt; &lt;unk&gt; a b c.</summary>
    static AssignRequest CharLmAssignment(string workerAddress)
    {
        var request = new AssignRequest { JobId = "j", Generation = 1, WorldSize = 1, SpecJson = JobSpecSerializer.Serialize(TestJobs.CharLm("unused.txt")), TokenizerKind = "char" };
        request.Peers.Add(new Peer { Rank = 0, Address = workerAddress });
        request.TokenizerTokens.AddRange(["<pad>", "<unk>", "a", "b", "c"]);
        return request;
    }

    static JobSpec Spec(TempDir tmp, int steps = 6)
    {
        tmp.Write("t.txt", TestJobs.Text(120));
        var lm = TestJobs.CharLm("t.txt", steps: steps);
        return lm with
        {
            Model = lm.Model with { Layers = 1, EmbeddingDim = 8, HiddenSize = 16 },
            Training = lm.Training with { BatchSize = 8, SeqLen = 12, EvalInterval = 0, CheckpointInterval = 0 },
        };
    }

    static string Submit(InProcessCluster cluster, TempDir tmp, string name, JobSpec spec) =>
        cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write(name, JobSpecSerializer.Serialize(spec))), 1)).JobId;

    static async Task<(InProcessCluster Cluster, LoseMessages Losing)> StartAsync(LoseMessages losing, CoordinatorOptions? options = null)
    {
        var cluster = await InProcessCluster.StartAsync(0, options);
        await cluster.AddWorkerAsync(configure: b =>
        {
            b.Services.AddSingleton(losing);
            b.Services.Configure<GrpcServiceOptions>(o => o.Interceptors.Add<LoseMessages>());
        });
        await cluster.WaitForIdleAsync(1, TimeSpan.FromSeconds(30));
        return (cluster, losing);
    }

    [Fact]
    public async Task An_empty_LoadShard_or_LoadState_stream_is_refused_Unavailable_saying_nothing_arrived()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
        using var channel = GrpcChannel.ForAddress(worker.Address);
        var client = new WorkerControl.WorkerControlClient(channel);
        Assert.True(client.Assign(CharLmAssignment(worker.Address)).Parameters > 0);

        using (var call = client.LoadShard())
        {
            await call.RequestStream.CompleteAsync();
            var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
            Assert.True(ClientStreams.ArrivedEmpty(e), e.ToString());
            Assert.Contains("LoadShard received no message", e.Status.Detail);
            Assert.Contains("send the call again", e.Status.Detail);
        }
        using (var call = client.LoadState())
        {
            await call.RequestStream.CompleteAsync();
            var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
            Assert.True(ClientStreams.ArrivedEmpty(e), e.ToString());
            Assert.Contains("LoadState received no message", e.Status.Detail);
        }
        // A shard of one chunk is read whole, and the reply says so.
        using (var call = client.LoadShard())
        {
            var chunk = new ShardChunk { JobId = "j" };
            var step = new ShardStep { Step = 0, Rows = 1, Width = 2, Count = 2 };
            step.Inputs.AddRange([2, 3]);
            step.Targets.AddRange([3, 4]);
            chunk.Steps.Add(step);
            await call.RequestStream.WriteAsync(chunk);
            await call.RequestStream.WriteAsync(new ShardChunk { JobId = "j" });
            await call.RequestStream.CompleteAsync();
            var reply = await call.ResponseAsync;
            Assert.Equal(2, reply.ChunksReceived);
            Assert.Equal(1, reply.StepsReceived);
        }
        client.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
    }

    [Fact]
    public async Task A_shard_whose_messages_were_lost_on_the_way_is_sent_again_and_the_job_trains_on_it()
    {
        using var tmp = new TempDir();
        var (cluster, losing) = await StartAsync(new LoseMessages("/LoadShard", emptied: ClientStreams.Attempts - 1));
        await using (cluster)
        {
            var id = Submit(cluster, tmp, "j.json", Spec(tmp));
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
            // One epoch's shard: sent again until it arrived (the lost attempts, then the one read).
            Assert.Equal(ClientStreams.Attempts, losing.Calls);
            Assert.Equal(6, info.Step);
        }
    }

    [Fact]
    public async Task A_shard_whose_messages_are_lost_every_time_fails_the_job_naming_the_worker_and_the_call()
    {
        using var tmp = new TempDir();
        var (cluster, losing) = await StartAsync(new LoseMessages("/LoadShard", emptied: int.MaxValue));
        await using (cluster)
        {
            var id = Submit(cluster, tmp, "j.json", Spec(tmp));
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.Equal(JobState.Failed, info.State);
            Assert.Contains("load shard at step 0", info.Message);
            Assert.Contains("LoadShard received no message", info.Message);
            var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
            Assert.Contains($"worker {worker.WorkerId}", info.Message);
            Assert.True(losing.Calls >= ClientStreams.Attempts, $"{losing.Calls} LoadShard calls");
        }
    }

    [Fact]
    public async Task A_shard_that_lost_one_of_its_messages_fails_the_job_saying_how_many_arrived()
    {
        using var tmp = new TempDir();
        // 1024 values a chunk: the epoch's rows (6 steps of 8 x 12 inputs and targets) take several.
        var (cluster, losing) = await StartAsync(new LoseMessages("/LoadShard", emptied: 0, dropIndex: 1), new CoordinatorOptions { ShardChunkValues = 1024 });
        await using (cluster)
        {
            var id = Submit(cluster, tmp, "j.json", Spec(tmp));
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.Equal(JobState.Failed, info.State);
            Assert.Contains("load shard at step 0", info.Message);
            Assert.Matches(@"the server read (\d+) of the (\d+) message\(s\) sent on attempt 1; 1 lost on the way", info.Message);
            Assert.True(losing.Calls >= 1);
        }
    }

    [Fact]
    public async Task A_checkpoints_state_whose_messages_were_lost_on_the_way_is_sent_again_and_the_job_resumes()
    {
        using var tmp = new TempDir();
        var (cluster, losing) = await StartAsync(new LoseMessages("/LoadState", emptied: ClientStreams.Attempts - 1));
        await using (cluster)
        {
            var spec = Spec(tmp, steps: 6);
            var firstId = Submit(cluster, tmp, "first.json", spec with { Training = spec.Training with { MaxSteps = 3 } });
            var first = await cluster.WaitAsync(firstId, TimeSpan.FromMinutes(3));
            Assert.True(first.State == JobState.Succeeded, $"{first.State}: {first.Message}");
            Assert.Equal(0, losing.Calls);

            var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(tmp.Write("rest.json", JobSpecSerializer.Serialize(spec))), 1);
            Dtrain.Cli.JobCommands.AddResume(cluster.Client, request, firstId);
            var info = await cluster.WaitAsync(cluster.Client.Submit(request).JobId, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
            Assert.Equal(3, info.StartStep);
            Assert.Equal(6, info.Step);
            Assert.Equal(ClientStreams.Attempts, losing.Calls);
        }
    }

    [Fact]
    public async Task A_shard_whose_request_is_replayed_without_its_chunks_is_sent_again_whole_by_ClientStreams()
    {
        var (cluster, losing) = await StartAsync(new LoseMessages("/LoadShard", emptied: 1));
        await using (cluster)
        {
            var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
            using var channel = GrpcChannel.ForAddress(worker.Address);
            var cut = new ReplayedFirstCall();
            var client = new WorkerControl.WorkerControlClient(channel.Intercept(cut));
            Assert.True(client.Assign(CharLmAssignment(worker.Address)).Parameters > 0);
            var chunks = Enumerable.Range(0, 3).Select(i =>
            {
                var chunk = new ShardChunk { JobId = "j" };
                var step = new ShardStep { Step = i, Rows = 1, Width = 2, Count = 2 };
                step.Inputs.AddRange([2, 3]);
                step.Targets.AddRange([3, 4]);
                chunk.Steps.Add(step);
                return chunk;
            }).ToList();
            var reply = await ClientStreams.SendAsync("load shard on the test worker", () => client.LoadShard(), chunks, r => r.ChunksReceived, CancellationToken.None);
            Assert.Equal(2, cut.Calls);
            Assert.Equal(2, losing.Calls);
            Assert.Equal(3, reply.ChunksReceived);
            Assert.Equal(3, reply.StepsReceived);
            client.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
        }
    }
}
