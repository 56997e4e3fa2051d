using Dtrain.Protos.Jobs;
using Dtrain.Protos.Worker;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;

namespace Dtrain.Tests.Cluster;

/// <summary>A worker refuses malformed control messages with a clear status instead of passing them to libtorch (which would abort the process).</summary>
public class WorkerProtocolTests
{
    /// <summary>A valid assignment of a one-worker char LM job "j" over the tokens &lt;pad&gt; &lt;unk&gt; a b c.</summary>
    private static AssignRequest CharLmAssignment(string workerAddress)
    {
        var request = new AssignRequest { JobId = "j", Generation = 1, WorldSize = 1, SpecJson = JobSpecSerializer.Serialize(TestJobs.CharLm("unused.txt")), TokenizerKind = "char" };
        request.Peers.Add(new Peer { Rank = 0, Address = workerAddress });
        request.TokenizerTokens.AddRange(["<pad>", "<unk>", "a", "b", "c"]);
        return request;
    }

    [Fact]
    public async Task Malformed_assignments_and_shards_are_refused_and_the_worker_keeps_serving()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
        using var channel = GrpcChannel.ForAddress(worker.Address);
        var client = new WorkerControl.WorkerControlClient(channel);

        var badSpec = new AssignRequest { JobId = "j", WorldSize = 1, SpecJson = """{"model":{"layers":-3}}""", TokenizerKind = "char" };
        badSpec.Peers.Add(new Peer { Rank = 0, Address = worker.Address });
        var e1 = Assert.Throws<RpcException>(() => client.Assign(badSpec));
        Assert.Equal(StatusCode.InvalidArgument, e1.StatusCode);
        Assert.Contains("$.model.layers", e1.Status.Detail);

        Assert.True(client.Assign(CharLmAssignment(worker.Address)).Parameters > 0);

        using (var call = client.LoadShard())
        {
            var chunk = new ShardChunk { JobId = "j" };
            var step = new ShardStep { Step = 0, Rows = 1, Width = 2, Count = 2 };
            step.Inputs.AddRange([2, 999_999]);
            step.Targets.AddRange([3, 4]);
            chunk.Steps.Add(step);
            await call.RequestStream.WriteAsync(chunk);
            await call.RequestStream.CompleteAsync();
            var e2 = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
            Assert.Equal(StatusCode.InvalidArgument, e2.StatusCode);
            Assert.Contains("999999", e2.Status.Detail);
        }

        var e3 = Assert.Throws<RpcException>(() => client.RunStep(new RunStepRequest { JobId = "j", Step = 0, Lr = 0.1, GlobalCount = 0 }));
        Assert.Equal(StatusCode.InvalidArgument, e3.StatusCode);
        var e4 = Assert.Throws<RpcException>(() => client.RunStep(new RunStepRequest { JobId = "other", Step = 0, Lr = 0.1, GlobalCount = 2 }));
        Assert.Equal(StatusCode.NotFound, e4.StatusCode);

        // Still alive and serving: its gRPC server answers health checks (a dead or aborted process cannot — unlike the
        // coordinator's membership list, which keeps a silent worker for its timeout), and it takes a new assignment.
        client.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
        var health = new Health.HealthClient(channel);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Check(new HealthCheckRequest { Service = "" }, deadline: DateTime.UtcNow.AddSeconds(10)).Status);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Check(new HealthCheckRequest { Service = Dtrain.Worker.WorkerHost.ReadinessService }, deadline: DateTime.UtcNow.AddSeconds(10)).Status);
        Assert.True(client.Assign(CharLmAssignment(worker.Address), deadline: DateTime.UtcNow.AddSeconds(30)).Parameters > 0);
        client.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
    }

    [Theory]
    [InlineData(1, 5, 2, "step 0: label id 5 outside [0, 2)")]
    [InlineData(1, 1, 3, "step 0: length 3 outside [1, 2]")]
    [InlineData(0, 0, 1, "step 0: 1 lengths for 0 rows")]
    public async Task A_classifier_shard_with_a_bad_label_or_length_is_refused_naming_the_step(int rows, int label, int length, string expected)
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
        using var channel = GrpcChannel.ForAddress(worker.Address);
        var client = new WorkerControl.WorkerControlClient(channel);
        var assign = CharLmAssignment(worker.Address);
        assign.SpecJson = JobSpecSerializer.Serialize(TestJobs.Classifier("unused.jsonl"));
        assign.TokenizerKind = "word";
        assign.Labels.AddRange(["neg", "pos"]);
        client.Assign(assign);
        using var call = client.LoadShard();
        var chunk = new ShardChunk { JobId = "j" };
        // One row of two tokens with its label and length, or no rows with a stray length (checked too).
        var step = new ShardStep { Step = 0, Rows = rows, Width = 2, Count = rows };
        if (rows > 0)
        {
            step.Inputs.AddRange([2, 3]);
            step.Targets.Add(label);
        }
        step.Lengths.Add(length);
        chunk.Steps.Add(step);
        await call.RequestStream.WriteAsync(chunk);
        await call.RequestStream.CompleteAsync();
        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains(expected, e.Status.Detail);
        client.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
    }

    [Fact]
    public async Task A_step_sent_ahead_waits_for_the_one_before_it_and_steps_out_of_the_window_are_refused()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        var worker = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Single();
        using var channel = GrpcChannel.ForAddress(worker.Address);
        var client = new WorkerControl.WorkerControlClient(channel);
        client.Assign(CharLmAssignment(worker.Address));
        using (var call = client.LoadShard())
        {
            var chunk = new ShardChunk { JobId = "j" };
            for (var k = 0; k < 4; k++)
            {
                var step = new ShardStep { Step = k, Rows = 1, Width = 2, Count = 2 };
                step.Inputs.AddRange([2, 3]);
                step.Targets.AddRange([3, 4]);
                chunk.Steps.Add(step);
            }
            await call.RequestStream.WriteAsync(chunk);
            await call.RequestStream.CompleteAsync();
            await call.ResponseAsync;
        }

        // Step 1 arrives first (the coordinator sends it while step 0 runs; the network may reorder them): it waits.
        var one = client.RunStepAsync(new RunStepRequest { JobId = "j", Step = 1, Lr = 0.1, GlobalCount = 2 }).ResponseAsync;
        await Task.Delay(300);
        Assert.False(one.IsCompleted, "step 1 ran before step 0");
        var zero = client.RunStepAsync(new RunStepRequest { JobId = "j", Step = 0, Lr = 0.1, GlobalCount = 2 }).ResponseAsync;
        Assert.Equal(2, (await zero).Count);
        Assert.Equal(2, (await one).Count);
        // Beyond one step ahead, or a step already taken: refused, and the worker goes on.
        var ahead = await Assert.ThrowsAsync<RpcException>(() => client.RunStepAsync(new RunStepRequest { JobId = "j", Step = 4, Lr = 0.1, GlobalCount = 2 }).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, ahead.StatusCode);
        Assert.Contains("step 4 requested after step 1", ahead.Status.Detail);
        var again = await Assert.ThrowsAsync<RpcException>(() => client.RunStepAsync(new RunStepRequest { JobId = "j", Step = 1, Lr = 0.1, GlobalCount = 2 }).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, again.StatusCode);
        Assert.Equal(2, (await client.RunStepAsync(new RunStepRequest { JobId = "j", Step = 2, Lr = 0.1, GlobalCount = 2 })).Count);
        client.Release(new ReleaseRequest { JobId = "j", Reason = "test" });
    }
}
