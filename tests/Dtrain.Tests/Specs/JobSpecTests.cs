using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Specs;

public class JobSpecTests
{
    static SpecException Reject(string json) => Assert.Throws<SpecException>(() => JobSpecSerializer.Parse(json, "t.json"));

    [Fact]
    public void Unknown_field_is_rejected_with_its_path_and_the_allowed_fields()
    {
        var e = Reject("""{"name":"x","model":{"cel":"lstm"}}""");
        var err = Assert.Single(e.Errors);
        Assert.Equal("$.model.cel", err.Path);
        Assert.Contains("cell", err.Message);
        Assert.Contains("hidden_size", err.Message);
    }

    [Fact]
    public void Wrong_type_is_rejected_with_its_path()
    {
        var e = Reject("""{"training":{"batch_size":"32"}}""");
        Assert.Equal("$.training.batch_size", Assert.Single(e.Errors).Path);
        Assert.Contains("integer", e.Errors[0].Message);
    }

    [Fact]
    public void Invalid_choice_lists_the_allowed_values()
    {
        var e = Reject("""{"data":{"train":"x.txt"},"model":{"cell":"transformer"}}""");
        var err = Assert.Single(e.Errors);
        Assert.Equal("$.model.cell", err.Path);
        Assert.Contains("\"lstm\"", err.Message);
        Assert.Contains("\"gru\"", err.Message);
    }

    [Fact]
    public void Every_problem_is_reported_at_once()
    {
        var e = Reject("""{"data":{"train":"x.txt"},"model":{"layers":0,"hidden_size":-1},"optimizer":{"lr":0},"training":{"device":"gpu7"}}""");
        var paths = e.Errors.Select(x => x.Path).ToHashSet();
        Assert.Superset(new HashSet<string> { "$.model.layers", "$.model.hidden_size", "$.optimizer.lr", "$.training.device" }, paths);
    }

    [Fact]
    public void Malformed_json_names_the_line()
    {
        var e = Reject("{\n  \"name\": \"x\",\n  \"task\": \n}");
        Assert.Contains("line 4", e.Message);
    }

    [Fact]
    public void Missing_training_file_and_text_format_for_classification_are_rejected()
    {
        var e = Reject("""{"task":"classification","data":{"format":"text"}}""");
        Assert.Contains(e.Errors, x => x.Path == "$.data.train");
        Assert.Contains(e.Errors, x => x.Path == "$.data.format");
    }

    [Fact]
    public void Bidirectional_language_model_is_rejected()
    {
        var e = Reject("""{"data":{"train":"x.txt"},"model":{"bidirectional":true}}""");
        Assert.Equal("$.model.bidirectional", Assert.Single(e.Errors).Path);
    }

    [Fact]
    public void Serialized_spec_parses_back_to_an_equal_spec()
    {
        var spec = TestJobs.Classifier("data.jsonl");
        var again = JobSpecSerializer.Parse(JobSpecSerializer.Serialize(spec));
        Assert.Equal(JobSpecSerializer.Serialize(spec), JobSpecSerializer.Serialize(again));
        Assert.Equal(spec.Training, again.Training);
        Assert.Equal(spec.Model, again.Model);
    }

    [Fact]
    public void Every_bundled_example_spec_is_valid()
    {
        var files = Directory.GetFiles(RepoFiles.PathOf("examples"), "*.json");
        Assert.NotEmpty(files);
        foreach (var f in files) JobSpecSerializer.Load(f);
    }
}
