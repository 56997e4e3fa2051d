using System.Collections.Concurrent;
using Dtrain.Data.Datasets;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Data.Datasets;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using Dtrain.Worker;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A data-parallel job's evaluation on a real cluster (coordinator and 2 workers over gRPC on loopback): every rank
/// evaluates its part of the validation split — from memory (the coordinator sends it) or read from a prepared
/// dataset — and the job's metrics are those of one process evaluating the job's final model on the whole split. From
/// memory, each rank is sent only its part of the split (about 1/N of it), not the whole.
/// </summary>
[Collection(DatasetJobCollection.Name)]
public sealed class EvaluationPartsClusterTests
{
    public static TheoryData<string, bool, int> Cases() => new()
    {
        { TaskKinds.LanguageModel, false, 2 }, { TaskKinds.LanguageModel, true, 2 }, { TaskKinds.Classification, false, 2 }, { TaskKinds.Classification, true, 2 },
        { TaskKinds.LanguageModel, false, 3 }, { TaskKinds.Classification, false, 3 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Workers_evaluate_their_parts_and_the_job_s_metrics_are_one_process_s_evaluation_of_its_model(string task, bool fromDataset, int workers)
    {
        using var tmp = new TempDir();
        JobSpec spec;
        string file;
        if (task == TaskKinds.LanguageModel)
        {
            file = tmp.Write("t.txt", TestJobs.Text(80));
            var lm = TestJobs.CharLm("t.txt", steps: 6);
            // 7 validation streams over 2 ranks: 3 and 4 (over 3: 2, 2 and 3).
            spec = lm with { Training = lm.Training with { BatchSize = 7, SeqLen = 12 } };
        }
        else
        {
            file = tmp.Write("d.jsonl", TestJobs.ClassificationJsonl(90));
            var clf = TestJobs.Classifier("d.jsonl", steps: 6);
            // Batches of 4 over 2 ranks, the last one short (18 examples: 5 batches).
            spec = clf with { Training = clf.Training with { BatchSize = 4 } };
        }
        var submitted = spec;
        if (fromDataset)
        {
            var dataset = Path.Combine(tmp.Path, "ds");
            DatasetPreparer.Prepare(PrepareTestSupport.Options(dataset, [file]) with
            {
                Task = spec.Task, ValidationFraction = spec.Data.ValidationFraction, Seed = spec.Training.Seed, Tokenizer = spec.Tokenizer,
            });
            submitted = spec with { Data = new DataSpec { Dataset = dataset } };
        }

        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [tmp.Path] });
        var batches = new ConcurrentDictionary<int, long>();
        var taps = new List<ShardTap>();
        for (var i = 0; i < workers; i++)
        {
            var worker = i;
            var probe = new EvaluationProbe { AfterBatch = (done, _) => batches.AddOrUpdate(worker, done, (_, k) => Math.Max(k, done)) };
            var tap = new ShardTap();
            taps.Add(tap);
            await cluster.AddWorkerAsync(configure: b =>
            {
                b.Services.AddSingleton(probe);
                b.Services.Configure<Grpc.AspNetCore.Server.GrpcServiceOptions>(o => o.Interceptors.Add<ShardTapInterceptor>(tap));
            });
        }
        await cluster.WaitForIdleAsync(workers, TimeSpan.FromSeconds(30));
        var path = tmp.Write("job.json", JobSpecSerializer.Serialize(submitted));
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), workers)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State} {info.Message}");

        // Every worker evaluated a part.
        Assert.True(batches.Count == workers && batches.Values.All(b => b > 0), $"batches evaluated per worker: {string.Join(", ", batches)}");
        var whole = PreparedData.Load(spec, tmp.Path);
        var wholeValues = (long)whole.ValidationTokens.Length + whole.ValidationSequences.Sum(s => (long)s.Length);
        var sent = string.Join(", ", taps.Select(t => t.ValidationValues));
        if (fromDataset) Assert.True(taps.All(t => t.ValidationValues == 0), $"validation values sent per worker: {sent}");
        else
        {
            // Each rank was sent its part of the validation split, not the whole: about 1/N of it (its part is a whole
            // number of streams or batches), and every part was sent (the union covers at least what was evaluated).
            Assert.True(taps.All(t => t.ValidationValues > 0 && t.ValidationValues <= wholeValues * (1.0 / workers + 0.2)),
                $"validation values sent per worker: {sent} of the split's {wholeValues}");
            Assert.True(taps.Sum(t => t.ValidationValues) <= wholeValues + workers, $"validation values sent per worker: {sent} of the split's {wholeValues}");
        }
        // One process evaluates the job's final checkpoint on the whole split (from the data file, as `dtrain eval` does).
        var checkpoint = Directory.GetFiles(cluster.DataDir, "*.dtck", SearchOption.AllDirectories).Where(f => f.Contains(id)).Max()!;
        using var model = Dtrain.Inference.TrainedModel.Load(checkpoint);
        var evaluation = TrainingTasks.For(spec);
        var one = evaluation.Evaluate(model.Engine, PreparedData.Load(spec, tmp.Path, model.Tokenizer, evaluation.HasLabels ? model.Labels : null), spec.Training.BatchSize, 0);
        Assert.True(one.Count > 0);
        Assert.Equal(one.Count, info.LastEval.Count);
        Assert.True(Math.Abs(info.LastEval.Loss - one.Loss) <= 1e-6 * one.Loss, $"the job's validation loss {info.LastEval.Loss:R}, one process {one.Loss:R}");
        if (evaluation.HasLabels)
        {
            Assert.Equal(one.Accuracy, info.LastEval.Accuracy);
            Assert.Equal(one.MacroF1, info.LastEval.MacroF1);
        }
        else Assert.True(Math.Abs(info.LastEval.Perplexity - one.Perplexity!.Value) <= 1e-6 * one.Perplexity.Value);
    }
}
