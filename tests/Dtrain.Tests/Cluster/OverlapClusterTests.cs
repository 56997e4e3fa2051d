using Dtrain.Inference;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// parallelism.overlap and parallelism.gradient_compression on real workers (gRPC ring on loopback sockets): overlap
/// changes when buckets leave, not one bit of the result; compressed gradients still train every replica alike.
/// </summary>
public class OverlapClusterTests
{
    [Fact]
    public async Task Three_workers_end_bit_identical_with_overlap_on_and_off_and_close_with_fp16_gradients()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        // Big enough (~0.6 M parameters) for two gradient buckets: the top layer and head leave during backward.
        var baseSpec = TestJobs.CharLm("t.txt", steps: 8) with { Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 2, EmbeddingDim = 16, HiddenSize = 224 } };
        baseSpec = baseSpec with { Training = baseSpec.Training with { BatchSize = 6, SeqLen = 12 } };
        await using var cluster = await InProcessCluster.StartAsync(3);
        async Task<TrainedModel> Run(string overlap, string compression)
        {
            var spec = baseSpec with { Parallelism = new ParallelismSpec { Overlap = overlap, GradientCompression = compression } };
            var path = tmp.Write($"{overlap}-{compression}.json", JobSpecSerializer.Serialize(spec));
            var id = cluster.Client.Submit(Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 3)).JobId;
            var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
            Assert.True(info.State == JobState.Succeeded, $"overlap {overlap}, compression {compression}: {info.State} {info.Message}");
            Assert.Equal(8, info.Step);
            return TrainedModel.Load(cluster.CheckpointFile(info));
        }
        using var off = await Run(OverlapKinds.Off, CompressionKinds.None);
        using var on = await Run(OverlapKinds.On, CompressionKinds.None);
        using var fp16 = await Run(OverlapKinds.On, CompressionKinds.Fp16);
        Assert.Equal(0.0, ParameterDiff.MaxRelative(off.Engine.Parameters, on.Engine.Parameters));
        var relative = ParameterDiff.MaxRelative(off.Engine.Parameters, fp16.Engine.Parameters);
        Assert.True(relative is > 0 and < 0.05, $"fp16 gradients: max |dp| / max |p| = {relative:E2} after 8 steps");
    }
}
