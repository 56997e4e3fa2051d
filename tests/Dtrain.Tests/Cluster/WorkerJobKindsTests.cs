using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Distributed.Pipeline;
using Dtrain.Rpc;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Worker;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// The two kinds of job a worker holds behind <see cref="IWorkerJob"/>, through the real <see cref="WorkerRuntime"/> in
/// process: a whole replica (world of one) and a one-stage pipeline of the same model take the same steps — the step
/// runs by the interface, whatever the kind — and each refuses what only the other kind does, with the protocol's
/// messages and status codes.
/// </summary>
public class WorkerJobKindsTests
{
    const string JobId = "kinds";
    static readonly string[] Tokens = ["<pad>", "<unk>", "a", "b", "c", "d", "e"];

    static JobSpec Spec()
    {
        var spec = TestJobs.CharLm("unused.txt");
        return spec with
        {
            // No dropout: the replica and the stage draw their masks differently.
            Model = spec.Model with { Dropout = 0 },
            Training = spec.Training with { LmSampling = LmSamplingKinds.Stream, ClipNorm = 0.5 },
        };
    }

    static Assignment Assignment(PipelineStageAssignment? stage) => new()
    {
        JobId = JobId, Generation = 1, SpecJson = JobSpecSerializer.Serialize(Spec()), Rank = 0, World = 1,
        Peers = [new ClusterPeer(0, "w1", "http://w1.in-memory.invalid:1")],
        Tokenizer = new TokenizerState(TokenizerKinds.Char, false, Tokens), Labels = [], TotalSteps = 10, StepsPerEpoch = 10, Threads = 1,
        Stage = stage,
    };

    /// <summary>The one stage of a one-stage pipeline: every layer, two micro-batches.</summary>
    static PipelineStageAssignment OneStage() => new(0, 1, 0, Spec().Model.Layers, 2, PipelineSchedule.Kinds[0], 0, 1, null, null);

    /// <summary>4 rows of 16 next-token pairs per step (the same for both kinds), and a validation split.</summary>
    static ShardSlice Shard(int steps)
    {
        var rows = Enumerable.Range(0, steps).Select(step =>
        {
            int Token(int i) => 2 + (i * 7 + step * 3 + i / 5) % (Tokens.Length - 2);
            return new ShardRows(step, 4, 16, [.. Enumerable.Range(0, 64).Select(Token)], [.. Enumerable.Range(1, 64).Select(Token)], null, 64, ResetState: step == 0);
        }).ToList();
        return new ShardSlice(rows, [.. Enumerable.Range(0, 40).Select(i => 2 + i % 5)], []);
    }

    static WorkerRuntime Runtime(WorkerSlot slot) =>
        new(slot, new LocalRing(), new NoPeers(), new WorkerOptions(), new StageMailboxes(), NullLogger<WorkerRuntime>.Instance);

    /// <summary>The refusal <paramref name="call"/> gets: FailedPrecondition (as the server interceptor maps it), with <paramref name="message"/>.</summary>
    static async Task Refused(Func<Task> call, string message)
    {
        var e = await Assert.ThrowsAnyAsync<InvalidOperationException>(call);
        Assert.Equal(message, e.Message);
        Assert.Equal(StatusCode.FailedPrecondition, ServerInterceptor.CodeOf(e, callCancelled: false));
    }

    [Fact]
    public async Task A_replica_and_a_one_stage_pipeline_take_the_same_steps_through_the_runtime()
    {
        const int steps = 3;
        var replicaSlot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        var stageSlot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        try
        {
            var replica = Runtime(replicaSlot);
            var stage = Runtime(stageSlot);
            var assignedReplica = await replica.AssignAsync(Assignment(null), CancellationToken.None);
            var assignedStage = await stage.AssignAsync(Assignment(OneStage()), CancellationToken.None);
            Assert.IsType<ReplicaWork>(replicaSlot.Current!.Work);
            Assert.IsType<StageWork>(stageSlot.Current!.Work);
            // The same model, built from the same seed.
            Assert.Equal(assignedReplica.Parameters, assignedStage.Parameters);
            Assert.Equal(assignedReplica.ParameterNames.Order(), assignedStage.ParameterNames.Order());
            Assert.Equal(assignedReplica.ParameterChecksum, assignedStage.ParameterChecksum, 4);
            Assert.Equal(steps, await replica.LoadShardAsync(JobId, new[] { Shard(steps) }.ToAsyncEnumerable(), CancellationToken.None));
            Assert.Equal(steps, await stage.LoadShardAsync(JobId, new[] { Shard(steps) }.ToAsyncEnumerable(), CancellationToken.None));

            var lr = Spec().Optimizer.Lr;
            for (var step = 0; step < steps; step++)
            {
                var whole = await replica.RunStepAsync(new StepCommand(JobId, step, lr, 64, ReportChecksum: true), CancellationToken.None);
                var part = await stage.RunStepAsync(new StepCommand(JobId, step, lr, 64, ReportChecksum: true), CancellationToken.None);
                Assert.Equal(64, whole.Count);
                Assert.Equal(64, part.Count);
                Assert.Equal(whole.LossSum, part.LossSum, 3);
                Assert.False(whole.Skipped);
                if (step == steps - 1)
                {
                    // A stage's step is two calls: the next one is refused until the optimizer step (after the last, where it takes no rows).
                    await Refused(() => stage.RunStepAsync(new StepCommand(JobId, steps, lr, 64), CancellationToken.None),
                        $"job {JobId}: step {steps} started before step {step} was applied");
                }
                var applied = await stage.ApplyStepAsync(new ApplyCommand(JobId, step, lr, 64, Math.Sqrt(part.SquaredGradNorm), ReportChecksum: true, Skip: false), CancellationToken.None);
                Assert.Equal(whole.ParameterChecksum, applied.ParameterChecksum, 3);
            }
        }
        finally
        {
            await replicaSlot.ReleaseAsync("test over");
            await stageSlot.ReleaseAsync("test over");
        }
    }

    [Fact]
    public async Task A_stage_step_refused_out_of_turn_keeps_its_rows_for_its_retry()
    {
        var slot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        try
        {
            var stage = Runtime(slot);
            await stage.AssignAsync(Assignment(OneStage()), CancellationToken.None);
            Assert.Equal(2, await stage.LoadShardAsync(JobId, new[] { Shard(2) }.ToAsyncEnumerable(), CancellationToken.None));
            var lr = Spec().Optimizer.Lr;
            var first = await stage.RunStepAsync(new StepCommand(JobId, 0, lr, 64), CancellationToken.None);
            // Step 1 before step 0 was applied: refused, and its rows stay for the retry.
            await Refused(() => stage.RunStepAsync(new StepCommand(JobId, 1, lr, 64), CancellationToken.None),
                $"job {JobId}: step 1 started before step 0 was applied");
            await stage.ApplyStepAsync(new ApplyCommand(JobId, 0, lr, 64, Math.Sqrt(first.SquaredGradNorm), ReportChecksum: false, Skip: false), CancellationToken.None);
            var retried = await stage.RunStepAsync(new StepCommand(JobId, 1, lr, 64), CancellationToken.None);
            Assert.Equal(64, retried.Count);
            Assert.Equal(4, retried.Rows);
        }
        finally
        {
            await slot.ReleaseAsync("test over");
        }
    }

    [Fact]
    public async Task Each_kind_refuses_what_only_the_other_does_with_the_protocols_messages()
    {
        var slot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        try
        {
            var runtime = Runtime(slot);
            await runtime.AssignAsync(Assignment(OneStage()), CancellationToken.None);
            await runtime.LoadShardAsync(JobId, new[] { Shard(1) }.ToAsyncEnumerable(), CancellationToken.None);
            var notWhole = $"job {JobId}: this worker holds pipeline stage 0, not a whole replica";
            await Refused(() => runtime.EvaluateAsync(new EvalCommand(JobId, 4, 1), CancellationToken.None), notWhole);
            await Refused(() => runtime.GetStateAsync(new StateSnapshot(JobId, 0), CancellationToken.None), notWhole);
            await Refused(() => runtime.AbortAsync(JobId, 2, "test"), $"job {JobId}: a pipeline stage cannot change membership; the job restarts from its checkpoint instead");
            await Refused(() => runtime.ReconfigureAsync(new RingMembership(JobId, 2, 0, 1, [new ClusterPeer(0, "w1", "http://w1.in-memory.invalid:1")], 0), CancellationToken.None),
                $"job {JobId}: a pipeline stage cannot change membership");
            await Refused(() => runtime.SyncStateAsync(new SyncSource(JobId, 1, new ClusterPeer(0, "w2", "http://w2.in-memory.invalid:1"), 0), CancellationToken.None),
                $"job {JobId}: a pipeline stage cannot take a peer's state");

            await runtime.AssignAsync(Assignment(null), CancellationToken.None);
            await runtime.LoadShardAsync(JobId, new[] { Shard(1) }.ToAsyncEnumerable(), CancellationToken.None);
            await Refused(() => runtime.ApplyStepAsync(new ApplyCommand(JobId, 0, 0.01, 64, 1, false, false), CancellationToken.None),
                $"job {JobId}: ApplyStep is for pipeline stages; this worker holds a whole replica");
            await Refused(() => runtime.GetStageParametersAsync(new StateSnapshot(JobId, 0), CancellationToken.None),
                $"job {JobId}: this worker holds a whole replica; use GetState");
            // What a replica does, it still does.
            Assert.True((await runtime.EvaluateAsync(new EvalCommand(JobId, 4, 1), CancellationToken.None)).Count > 0);
            Assert.NotEmpty(await runtime.GetStateAsync(new StateSnapshot(JobId, 0), CancellationToken.None));
        }
        finally
        {
            await slot.ReleaseAsync("test over");
        }
    }

    /// <summary>Every job of these tests is a world of one.</summary>
    internal sealed class LocalRing : IRingConnector
    {
        public Task<RingConnection> ConnectAsync(RingMembership membership, CancellationToken cancel) =>
            membership.World == 1 ? Task.FromResult(new RingConnection(LocalReducer.Instance)) : throw new ArgumentException($"a world of {membership.World}: these tests have none");
    }

    internal sealed class NoPeers : IPeerState
    {
        public Task<byte[]> FetchStateAsync(string address, string workerId, string certificateSha256, string jobId, long step, CancellationToken cancel) =>
            throw new IOException($"no peer {workerId} in this test");
    }
}
