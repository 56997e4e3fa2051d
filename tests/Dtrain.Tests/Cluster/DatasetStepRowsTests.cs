using System.Diagnostics;
using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Distributed.Pipeline;
using Dtrain.Rpc;
using Dtrain.Specs;
using Dtrain.Tests.Data.Datasets;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using Dtrain.Worker;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A dataset job's step through the real <see cref="WorkerRuntime"/> in process, on a real prepared dataset whose shard is
/// still being read when the step starts: the step awaits its rows without blocking a thread, and a read that fails
/// fails the step naming the dataset and the shard.
/// </summary>
public sealed class DatasetStepRowsTests : IDisposable
{
    const string JobId = "rows";
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public async Task A_step_awaits_rows_still_being_read_and_a_failed_read_fails_it_naming_the_shard()
    {
        var (root, spec, sha, tokenizer, stepsPerEpoch, expected) = await PrepareAsync();
        // Shard 0 becomes a pipe: opening it waits until the test opens its other end (then it is not the shard).
        var shard = Path.Combine(root, "train-00000.tokens");
        var length = new FileInfo(shard).Length;
        File.Delete(shard);
        using (var mkfifo = Process.Start("mkfifo", [shard])) await mkfifo.WaitForExitAsync();

        var slot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        var runtime = NewRuntime(slot);
        var returned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        // Bounded by the step: the pipe is opened once the step has returned to its caller (the delay only limits a failure).
        var writer = Task.Run(async () =>
        {
            await Task.WhenAny(returned.Task, Task.Delay(TimeSpan.FromSeconds(60)));
            await using var w = new FileStream(shard, FileMode.Open, FileAccess.Write);
            try
            {
                await w.WriteAsync(new byte[length]);
            }
            catch (IOException)
            {
                // The reader refused the pipe without reading it (broken pipe).
            }
        });
        try
        {
            await AssignFirstStepAsync(runtime, root, spec, sha, tokenizer, stepsPerEpoch, expected);
            var step = runtime.RunStepAsync(new StepCommand(JobId, 0, spec.Optimizer.Lr, expected.Count), CancellationToken.None);
            var awaited = !step.IsCompleted;
            returned.SetResult();
            var e = await Assert.ThrowsAnyAsync<InvalidOperationException>(() => step);
            await writer;
            Assert.True(awaited, "the step blocked its caller until its rows were read");
            Assert.Contains($"job {JobId}: step 0: dataset {root}: train-00000.tokens is not a regular file", e.Message);
        }
        finally
        {
            returned.TrySetResult();
            await writer.ContinueWith(_ => { }, TaskScheduler.Default);
            await slot.ReleaseAsync("test over");
        }
    }

    [Fact]
    public async Task A_dataset_jobs_background_shard_checks_run_at_normal_priority_from_half_its_steps_and_are_done_by_its_last()
    {
        var (root, spec) = PrepareCorpus();
        using var ds = await StoredDataset.OpenAsync(root, verification: ShardVerification.Background);
        var stepsPerEpoch = TrainingTasks.For(spec).TrainBatches(spec, PreparedData.FromDataset(ds)).StepsPerEpoch;
        const int total = 6;
        using var reader = new DatasetRows("probe", spec, ds, stepsPerEpoch, totalSteps: total);
        for (var step = 0; step < total; step++)
        {
            await TakeStepAsync(reader, step, stepsPerEpoch);
            // Steps 0 and 1 of 6 leave the checks at the lowest priority; from step 2 (the 3rd of 6) on they are hurried.
            Assert.Equal(step >= 2, ds.VerificationHurried);
        }
        // The last step waited for the checks of every shard read.
        Assert.True(ds.ShardsOpened > 0);
        Assert.Equal(ds.ShardsOpened, ds.BlocksVerified);   // each shard's one block (8 MiB blocks), all read
    }

    [Fact]
    public async Task A_dataset_jobs_last_step_waits_only_for_the_blocks_its_rows_read()
    {
        // 3 steps of 4 random windows over shards of 97 ids in blocks of 16 bytes: most blocks are never read.
        var file = dir.Write("corpus.txt", string.Concat(Enumerable.Range(0, 200).Select(i => $"Line {i}: some words {i % 7}\n")));
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]) with { BlockBytes = 16 };
        DatasetPreparer.Prepare(o);
        var lm = TestJobs.CharLm("unused.txt");
        var spec = lm with { Data = new DataSpec { Dataset = o.Output }, Training = lm.Training with { BatchSize = 4, SeqLen = 8 } };
        using var ds = await StoredDataset.OpenAsync(o.Output, verification: ShardVerification.Background);
        var stepsPerEpoch = TrainingTasks.For(spec).TrainBatches(spec, PreparedData.FromDataset(ds)).StepsPerEpoch;
        const int total = 3;
        using var reader = new DatasetRows("probe", spec, ds, stepsPerEpoch, totalSteps: total);
        for (var step = 0; step < total; step++)
        {
            await TakeStepAsync(reader, step, stepsPerEpoch);
        }
        // The last step waited for the blocks read (12 windows of 9 ids: at most 2 blocks each) and for nothing else.
        var blocks = ds.Train.Entry.Shards.Sum(s => s.Tokens.BlockSha256!.Count);
        Assert.InRange(ds.BlocksVerified, 1, 2 * total * 4);
        Assert.True(ds.BlocksVerified < blocks / 4, $"{ds.BlocksVerified} blocks checked of {blocks}");
        Assert.Equal(0, ds.FilesVerified);
    }

    [Fact]
    public async Task A_step_abandoned_while_awaiting_its_rows_ends_as_abandoned_not_as_a_bare_cancellation()
    {
        var (root, spec, sha, tokenizer, stepsPerEpoch, expected) = await PrepareAsync();
        // Shard 0 becomes a pipe: opening it waits until the test opens its other end, so the step awaits its rows.
        var shard = Path.Combine(root, "train-00000.tokens");
        File.Delete(shard);
        using (var mkfifo = Process.Start("mkfifo", [shard])) await mkfifo.WaitForExitAsync();

        var slot = new WorkerSlot(NullLogger<WorkerSlot>.Instance);
        var runtime = NewRuntime(slot);
        try
        {
            await AssignFirstStepAsync(runtime, root, spec, sha, tokenizer, stepsPerEpoch, expected);
            var step = runtime.RunStepAsync(new StepCommand(JobId, 0, spec.Optimizer.Lr, expected.Count), CancellationToken.None);
            Assert.False(step.IsCompleted, "the step did not await its rows");
            // A new membership generation abandons the step while it awaits its rows.
            var abort = runtime.AbortAsync(JobId, 2, "test");
            var e = await Assert.ThrowsAsync<WorkStoppedException>(() => step);
            Assert.Equal($"job {JobId}: step 0 abandoned for a new membership generation", e.Message);
            await abort;
        }
        finally
        {
            // The read still waiting on the pipe ends: its other end opened (read-write: never blocks on Linux) and closed.
            using (new FileStream(shard, FileMode.Open, FileAccess.ReadWrite)) { }
            await slot.ReleaseAsync("test over");
        }
    }

    /// <summary>A small corpus prepared (char LM) into dir/ds, and a stream-sampled job spec (batch 4 × 8) training from it.</summary>
    (string Root, JobSpec Spec) PrepareCorpus()
    {
        var file = dir.Write("corpus.txt", string.Concat(Enumerable.Range(0, 40).Select(i => $"Line {i}: some words {i % 7}\n")));
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]);
        DatasetPreparer.Prepare(o);
        var lm = TestJobs.CharLm("unused.txt");
        return (o.Output, lm with { Data = new DataSpec { Dataset = o.Output }, Training = lm.Training with { BatchSize = 4, SeqLen = 8, LmSampling = LmSamplingKinds.Stream } });
    }

    /// <summary><see cref="PrepareCorpus"/>, then what a worker is assigned with and step 0's rows, read through <see cref="DatasetRows"/> before the test breaks a shard.</summary>
    async Task<(string Root, JobSpec Spec, string Sha, TokenizerState Tokenizer, long StepsPerEpoch, BatchRows Expected)> PrepareAsync()
    {
        var (root, spec) = PrepareCorpus();
        using var ds = await StoredDataset.OpenAsync(root);
        using var reader = new DatasetRows("probe", spec, ds, TrainingTasks.For(spec).TrainBatches(spec, PreparedData.FromDataset(ds)).StepsPerEpoch);
        return (root, spec, ds.ManifestSha256, ds.Tokenizer.ToState(), reader.Source.StepsPerEpoch, reader.Source.GetRows(new StepPosition(0, 0), 0, 4)!);
    }

    static WorkerRuntime NewRuntime(WorkerSlot slot) =>
        new(slot, new WorkerJobKindsTests.LocalRing(), new WorkerJobKindsTests.NoPeers(), new WorkerOptions(), new StageMailboxes(), NullLogger<WorkerRuntime>.Instance);

    /// <summary>Assigns the dataset job to the runtime (rank 0 of 1) and gives it step 0's planned rows.</summary>
    static async Task AssignFirstStepAsync(WorkerRuntime runtime, string root, JobSpec spec, string sha, TokenizerState tokenizer, long stepsPerEpoch, BatchRows expected)
    {
        await runtime.AssignAsync(new Assignment
        {
            JobId = JobId, Generation = 1, SpecJson = JobSpecSerializer.Serialize(spec), Rank = 0, World = 1,
            Peers = [new ClusterPeer(0, "w1", "http://w1.in-memory.invalid:1")], Tokenizer = tokenizer, Labels = [],
            TotalSteps = 10, StepsPerEpoch = stepsPerEpoch, Threads = 1, Dataset = new AssignedDataset(root, sha),
        }, CancellationToken.None);
        var planned = new ShardRows(0, expected.Rows, expected.Width, [], [], null, expected.Count, ResetState: true) { Planned = true, RowStart = 0 };
        Assert.Equal(1, await runtime.LoadShardAsync(JobId, new[] { ShardSlice.Of([planned]) }.ToAsyncEnumerable(), CancellationToken.None));
    }

    /// <summary>One step of a single-rank job as a worker takes it: the whole global batch planned, then awaited from the reader.</summary>
    static async Task TakeStepAsync(DatasetRows reader, int step, long stepsPerEpoch)
    {
        var at = new StepPosition(step / stepsPerEpoch, step % stepsPerEpoch);
        var rows = reader.Source.GetRows(at, 0, reader.Source.RowsAt(at))!;
        var planned = new ShardRows(step, rows.Rows, rows.Width, [], [], null, rows.Count, ResetState: step == 0) { Planned = true, RowStart = 0 };
        Assert.NotNull(await reader.TakeAsync(planned, CancellationToken.None));
    }
}
