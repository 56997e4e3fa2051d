using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// Data parallelism must not change the result: with the same seed and global batch, 1-4 workers end with the
/// parameters of single-process `dtrain train` after 20 steps, within 1e-5 (max |Δp| / max |p|, fp32).
/// </summary>
public class EquivalenceTests
{
    public static TheoryData<string, string, int> Cases()
    {
        var data = new TheoryData<string, string, int>();
        foreach (var task in new[] { TaskKinds.LanguageModel, TaskKinds.Classification })
            foreach (var cell in new[] { CellKinds.Lstm, CellKinds.Gru })
                data.Add(task, cell, 0);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task One_to_four_workers_match_single_process_after_20_steps(string task, string cell, int unused)
    {
        _ = unused;
        using var tmp = new TempDir();
        JobSpec spec;
        if (task == TaskKinds.LanguageModel)
        {
            tmp.Write("t.txt", TestJobs.Text());
            spec = TestJobs.CharLm("t.txt", cell, steps: 20);
            // An odd global batch, so ranks get uneven rows.
            spec = spec with { Training = spec.Training with { BatchSize = 7, SeqLen = 12 } };
        }
        else
        {
            tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(90));
            spec = TestJobs.Classifier("d.jsonl", cell: cell, steps: 20);
            // 72 training examples, batch 10: the last batch of each epoch has 2 rows, so some ranks get none.
            // SGD without clipping: unlike Adam it is not invariant to the gradient's scale, so a wrong average shows.
            spec = spec with
            {
                Model = spec.Model with { Bidirectional = true },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
                Training = spec.Training with { BatchSize = 10, ClipNorm = 0 },
            };
        }
        spec = spec with { Training = spec.Training with { EvalInterval = 0, CheckpointInterval = 0 } };
        var specPath = tmp.Write("job.json", JobSpecSerializer.Serialize(spec));

        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);

        await using var cluster = await InProcessCluster.StartAsync(4);
        foreach (var world in new[] { 1, 2, 3, 4 })
        {
            var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(specPath), world);
            var id = cluster.Client.Submit(request).JobId;
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"{world} worker(s): {info.State} {info.Message}");
            Assert.Equal(20, info.Step);
            Assert.Equal(world, info.WorkerIds.Count);
            using var distributed = TrainedModel.Load(cluster.CheckpointFile(info));
            var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, distributed.Engine.Parameters);
            Assert.True(relative <= 1e-5, $"{task}/{cell} with {world} worker(s): max |dp| / max |p| = {relative:E2}");
        }
    }

    sealed class NullObserver : ITrainingObserver;
}
