using Dtrain.Distributed.Pipeline;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Specs;

/// <summary>The parallelism section of a spec, `dtrain plan`, and the refusal to run what this version only plans.</summary>
public class ParallelismSpecTests
{
    static string Spec(string parallelism, int layers = 4, int batch = 8) =>
        $$"""{"name": "p", "data": {"train": "t.txt"}, "model": {"layers": {{layers}}, "hidden_size": 16, "embedding_dim": 8}, "training": {"batch_size": {{batch}}}, "parallelism": {{parallelism}}}""";

    static SpecException Invalid(string json) => Assert.Throws<SpecException>(() => JobSpecSerializer.Parse(json, "p.json"));

    [Fact]
    public void A_pipeline_section_parses_with_defaults_and_round_trips()
    {
        var spec = JobSpecSerializer.Parse(Spec("""{"pipeline": {"stages": 2}}"""));
        var p = spec.Parallelism!.Pipeline!;
        Assert.Equal((2, 1, "1f1b", "balanced"), (p.Stages, p.Microbatches, p.Schedule, p.Partition));
        Assert.Null(p.Ranges());
        var again = JobSpecSerializer.Parse(JobSpecSerializer.Serialize(spec with { Parallelism = new ParallelismSpec { Data = 2, Pipeline = p with { Partition = "0-1, 2-3" } } }));
        Assert.Equal([(0, 2), (2, 2)], again.Parallelism!.Pipeline!.Ranges()!);
        Assert.Equal(2, again.Parallelism.Data);
    }

    [Theory]
    [InlineData("""{"pipeline": {"stages": 5}}""", "$.parallelism.pipeline.stages", "exceeds model.layers 4")]
    [InlineData("""{"pipeline": {"stages": 2, "microbatches": 3}}""", "$.parallelism.pipeline.microbatches", "does not divide training.batch_size 8")]
    [InlineData("""{"pipeline": {"stages": 2, "schedule": "zigzag"}}""", "$.parallelism.pipeline.schedule", "\"gpipe\", \"1f1b\"")]
    [InlineData("""{"pipeline": {"stages": 2, "partition": "0-1,3-3"}}""", "$.parallelism.pipeline.partition", "starts at layer 3 where 2 was expected")]
    [InlineData("""{"pipeline": {"stages": 2, "partition": "0-1,2-2"}}""", "$.parallelism.pipeline.partition", "covers layers 0..2 of model.layers 4")]
    [InlineData("""{"pipeline": {"stages": 3, "partition": "0-1,2-3"}}""", "$.parallelism.pipeline.partition", "2 layer range(s) for 3 stages")]
    [InlineData("""{"pipeline": {"stages": 2, "partition": "0..1,2-3"}}""", "$.parallelism.pipeline.partition", "is not a layer range")]
    [InlineData("""{"data": 2}""", "$.parallelism.data", "only used with parallelism.pipeline")]
    [InlineData("""{"pipeline": {"stages": 2, "extra": 1}}""", "$.parallelism.pipeline.extra", "unknown field")]
    [InlineData("""{"overlap": "maybe"}""", "$.parallelism.overlap", "\"auto\", \"on\", \"off\"")]
    [InlineData("""{"overlap": "on", "pipeline": {"stages": 2}}""", "$.parallelism.overlap", "for data parallelism alone")]
    [InlineData("""{"gradient_compression": "fp16", "pipeline": {"stages": 2}}""", "$.parallelism.gradient_compression", "applies to data parallelism alone")]
    [InlineData("""{"gradient_compression": "int8"}""", "$.parallelism.gradient_compression", "\"none\", \"fp16\", \"bf16\"")]
    public void Bad_layouts_are_refused_naming_the_field(string parallelism, string path, string message)
    {
        var e = Invalid(Spec(parallelism));
        Assert.Contains(e.Errors, x => x.Path == path && x.Message.Contains(message, StringComparison.Ordinal));
    }

    [Fact]
    public void Overlap_and_compression_parse_with_defaults_and_on_is_refused_where_nothing_can_overlap()
    {
        var spec = JobSpecSerializer.Parse(Spec("""{"gradient_compression": "bf16"}"""));
        Assert.Equal((OverlapKinds.Auto, CompressionKinds.Bf16), (spec.Parallelism!.Overlap, spec.Parallelism.GradientCompression));
        // auto: on only with a core to spare for the data plane; on: always (where possible); off: never.
        Assert.True(OverlapKinds.Enabled(spec, spareCores: 1));
        Assert.False(OverlapKinds.Enabled(spec, spareCores: 0));
        Assert.True(OverlapKinds.Enabled(JobSpecSerializer.Parse(Spec("""{"overlap": "on"}""")), spareCores: 0));
        Assert.False(OverlapKinds.Enabled(JobSpecSerializer.Parse(Spec("""{"overlap": "off"}""")), spareCores: 8));
        Assert.False(OverlapKinds.Enabled(JobSpecSerializer.Parse(Spec("""{"overlap": "auto"}""", layers: 1)), spareCores: 8));
        var e = Invalid(Spec("""{"overlap": "on"}""", layers: 1));
        Assert.Contains(e.Errors, x => x.Path == "$.parallelism.overlap" && x.Message.Contains("model.layers >= 2", StringComparison.Ordinal));
        var classifier = Spec("""{"overlap": "on"}""").Replace("\"name\": \"p\",", "\"name\": \"p\", \"task\": \"classification\",", StringComparison.Ordinal);
        e = Invalid(classifier);
        Assert.Contains(e.Errors, x => x.Path == "$.parallelism.overlap" && x.Message.Contains("needs task language_model", StringComparison.Ordinal));
    }

    [Fact]
    public void Plan_counts_every_parameter_once_and_refuses_too_few_workers_and_a_small_budget()
    {
        var spec = JobSpecSerializer.Parse(Spec("""{"data": 2, "pipeline": {"stages": 2, "microbatches": 2, "schedule": "gpipe"}}"""));
        var plan = PipelinePlan.Create(spec, workers: 4, vocabSize: 30, outputs: 30);
        Assert.Equal(2, plan.Replicas);
        Assert.Equal(plan.Model.Total, plan.Stages.Sum(s => s.Parameters));
        Assert.Equal(2, plan.RowsPerMicroBatch);
        Assert.All(plan.Memory, m => Assert.True(m.Weights > 0 && m.OptimizerState == 2 * m.Weights && m.Activations > 0));
        Assert.Contains("need 4 workers; --workers is 3", Assert.Throws<ArgumentException>(() => PipelinePlan.Create(spec, 3, 30, 30)).Message);
        Assert.Contains("over the 0.0 MB budget", Assert.Throws<ArgumentException>(() => PipelinePlan.Create(spec, 4, 30, 30, memoryBudgetBytes: 1000)).Message);
        var text = plan.Render();
        Assert.Contains("2 data-parallel replica(s) × 2 pipeline stage(s)", text);
        Assert.Contains("schedule gpipe: 6 time steps", text);
    }

    [Fact]
    public void Plan_command_prints_the_layout_and_exits_2_on_a_layout_that_cannot_run()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        tmp.Write("p.json", Spec("""{"pipeline": {"stages": 4, "microbatches": 4}}"""));
        var ok = CliRunner.Run(tmp.Path, "plan", "p.json", "--workers", "4");
        Assert.True(ok.ExitCode == 0, ok.ToString());
        Assert.Contains("1 data-parallel replica(s) × 4 pipeline stage(s) = 4 of 4 worker(s)", ok.Stdout);
        Assert.Contains("schedule 1f1b: 14 time steps", ok.Stdout);
        Assert.Contains("efficiency bound M/(M+K-1) = 57.1", ok.Stdout);
        var grid = ok.Stdout.Split('\n').SkipWhile(l => !l.StartsWith("time", StringComparison.Ordinal)).Skip(1).Count(l => l.Length > 0 && char.IsDigit(l[0]));
        Assert.Equal(14, grid);

        var few = CliRunner.Run(tmp.Path, "plan", "p.json", "--workers", "3");
        Assert.Equal(2, few.ExitCode);
        Assert.Contains("$.parallelism.pipeline.stages: a pipeline of 4 stages with parallelism.data 0 (replicas = workers / stages) needs --workers set to a multiple of 4; it is 3", few.Stderr);
        // What the coordinator refuses at submit, plan refuses too (it used to plan 1 replica on 4 of 6 workers).
        var six = CliRunner.Run(tmp.Path, "plan", "p.json", "--workers", "6");
        Assert.Equal(2, six.ExitCode);
        Assert.Contains("needs --workers set to a multiple of 4; it is 6", six.Stderr);

        // This version plans pipelines but does not run them: train refuses, naming the field.
        var train = CliRunner.Run(tmp.Path, "train", "p.json");
        Assert.Equal(2, train.ExitCode);
        Assert.Contains("$.parallelism.pipeline", train.Stderr);
    }
}
