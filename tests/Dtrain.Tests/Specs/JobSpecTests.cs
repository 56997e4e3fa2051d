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
    public void Fields_a_task_or_format_never_reads_are_rejected_instead_of_ignored()
    {
        // A language model's text is one stream: max_length / overlength were accepted and silently did nothing.
        var e = Reject("""{"data":{"train":"x.txt","max_length":10,"overlength":"error"}}""");
        Assert.Equal(["$.data.max_length", "$.data.overlength"], e.Errors.Select(x => x.Path).Order());
        Assert.Contains("only used for classification", e.Message);
        // Synthetic data is generated: a data file next to it was accepted and never read.
        e = Reject("""{"task":"classification","data":{"format":"synthetic","train":"x.jsonl","synthetic":{"kind":"recall"}}}""");
        Assert.Equal("$.data.train", Assert.Single(e.Errors).Path);
        // For classification both stay allowed.
        Assert.Empty(JobSpecValidator.Validate(JobSpecSerializer.Parse("""{"task":"classification","data":{"format":"jsonl","train":"x.jsonl","max_length":10,"overlength":"error"}}""", "test")));
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

    [Fact]
    public void A_field_given_twice_is_rejected_with_its_path_and_both_lines()
    {
        var e = Reject("{\"name\": \"x\", \"data\": {\"train\": \"t.txt\"},\n \"model\": {\"layers\": 2,\n\n   \"layers\": 3}}");
        var err = Assert.Single(e.Errors);
        Assert.Equal("$.model.layers", err.Path);
        Assert.Contains("duplicate field: given at line 2 and again at line 4", err.Message);
        // At the top level, and inside nested objects, too.
        Assert.Equal("$.name", Assert.Single(Reject("""{"name":"a","data":{"train":"t.txt"},"name":"b"}""").Errors).Path);
        // The same name in different objects is fine.
        JobSpecSerializer.Parse("""{"data":{"train":"t.txt"},"model":{"layers":2},"parallelism":null,"training":{"seed":1},"optimizer":{"lr":0.01}}""");
    }

    [Fact]
    public void Invalid_utf8_in_a_spec_file_is_an_error_at_its_line_and_column()
    {
        using var tmp = new TempDir();
        byte[] bytes = [.. "{\"name\": \"x\",\n  \"data\": {\"train\": \"caf"u8, 0xE9, .. ".txt\"}}"u8];
        var e = Assert.Throws<SpecException>(() => JobSpecSerializer.Load(tmp.WriteBytes("latin1.json", bytes)));
        var err = Assert.Single(e.Errors);
        Assert.Contains("invalid UTF-8 at line 2, byte 25 (0xE9", err.Message);
        Assert.Contains("latin1.json", e.Message);
        // UTF-16 gets a hint; a UTF-8 byte-order mark is fine.
        Assert.Contains("UTF-16", Assert.Throws<SpecException>(() => JobSpecSerializer.Load(tmp.WriteBytes("u16.json", System.Text.Encoding.Unicode.GetPreamble().Concat(System.Text.Encoding.Unicode.GetBytes("{}")).ToArray()))).Message);
        Assert.Equal("x", JobSpecSerializer.Load(tmp.WriteBytes("bom.json", [0xEF, 0xBB, 0xBF, .. "{\"name\": \"x\", \"data\": {\"train\": \"t.txt\"}}"u8])).Name);
    }

    [Fact]
    public void A_spec_path_that_is_a_directory_says_so()
    {
        using var tmp = new TempDir();
        var dir = Directory.CreateDirectory(Path.Combine(tmp.Path, "job.json")).FullName;
        var e = Assert.Throws<SpecException>(() => JobSpecSerializer.Load(dir));
        Assert.Contains($"{dir} is a directory, not a spec file", e.Message);
        Assert.DoesNotContain("not found", e.Message);
        Assert.Contains("file not found", Assert.Throws<SpecException>(() => JobSpecSerializer.Load(Path.Combine(tmp.Path, "nope.json"))).Message);
    }
}
