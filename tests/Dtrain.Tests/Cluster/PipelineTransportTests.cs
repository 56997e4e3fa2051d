using System.Collections.Concurrent;
using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Security;
using Dtrain.Tests.Support;
using Dtrain.Training;
using Dtrain.Worker;
using Microsoft.Extensions.Logging;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A 2-stage pipeline job (2 micro-batches, 1F1B) on a real coordinator and real workers whose stage links take each
/// data transport (Worker:Transport shm, tcp, grpc): each worker logs the links it opened with that transport, the
/// gathered model equals one process training the whole model, and the three transports end with bit-identical
/// parameters and the same validation loss (the transport changes how bytes travel, never the values).
/// </summary>
public class PipelineTransportTests
{
    /// <summary>Each transport's gathered parameters and loss, to compare the transports run so far (the theory's cases run in sequence).</summary>
    static readonly ConcurrentDictionary<string, (float[] Parameters, double Loss)> Results = new();

    [Theory]
    [InlineData("shm", "shared memory")]
    [InlineData("tcp", "tcp")]
    [InlineData("grpc", "grpc")]
    public async Task A_two_stage_pipeline_trains_identically_over(string transport, string logged)
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(120));
        var spec = TestJobs.CharLm("t.txt", steps: 8);
        spec = spec with
        {
            Model = spec.Model with { Layers = 2, EmbeddingDim = 8, HiddenSize = 16 },
            Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Sgd, Lr = 0.5, Momentum = 0.9 },
            Training = spec.Training with { BatchSize = 8, SeqLen = 12, ClipNorm = 0.05, EvalInterval = 4, CheckpointInterval = 0 },
        };
        var single = Trainer.Run(spec, tmp.Path, new TrainOptions { OutputDir = Path.Combine(tmp.Path, "single") }, new NullObserver(), CancellationToken.None);
        using var reference = TrainedModel.Load(single.Checkpoint!);

        var pipelined = spec with { Parallelism = new ParallelismSpec { Pipeline = new PipelineSpec { Stages = 2, Microbatches = 2, Schedule = "1f1b" } } };
        var path = tmp.Write("pipe.json", JobSpecSerializer.Serialize(pipelined));
        var logs = new AuthModeTests.Logs();
        await using var cluster = await InProcessCluster.StartAsync(0);
        for (var i = 0; i < 2; i++)
            await cluster.AddWorkerAsync(new WorkerOptions { Transport = transport }, b =>
            {
                b.Logging.AddProvider(logs);
                b.Logging.AddFilter<AuthModeTests.Logs>(typeof(StageLinkConnector).FullName, LogLevel.Information);
            });
        var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 2)).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{transport}: {info.State}: {info.Message}");
        Assert.Equal(8, info.Step);

        // Each stage opened its one link with the chosen transport, and said so.
        var lines = logs.Entries.Where(e => e.Category == typeof(StageLinkConnector).FullName).Select(e => e.Message).ToList();
        Assert.Equal(2, lines.Count);
        Assert.All(lines, l => Assert.Matches($@"^stage links \S+->\S+: {logged} \(job {id} generation \d+, stage [01]/2 of replica 0, Worker:Transport = {transport}\)$", l));

        using var gathered = TrainedModel.Load(cluster.CheckpointFile(info));
        var relative = ParameterDiff.MaxRelative(reference.Engine.Parameters, gathered.Engine.Parameters);
        Assert.True(relative <= 1e-5, $"{transport}: max |dp| / max |p| = {relative:E2}");
        Assert.Equal(single.Final!.Loss, info.LastEval.Loss, 4);

        var values = gathered.Engine.Parameters.SelectMany(p => p.data<float>().ToArray()).ToArray();
        Results[transport] = (values, info.LastEval.Loss);
        foreach (var (other, result) in Results.Where(r => r.Key != transport))
        {
            Assert.True(result.Parameters.AsSpan().SequenceEqual(values), $"{transport} and {other} ended with different parameters");
            Assert.Equal(result.Loss, info.LastEval.Loss);
        }
    }

    sealed class NullObserver : ITrainingObserver;
}
