using Dtrain.Data;
using Dtrain.Specs;

using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data;

public sealed class DatasetLoaderTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    string WriteClassification(int n, string name = "train.jsonl", Func<int, string>? label = null) =>
        dir.Write(name, string.Concat(Enumerable.Range(0, n).Select(i => $"{{\"text\":\"record {i}\",\"label\":\"{(label ?? (k => k % 3 == 0 ? "x" : "y"))(i)}\"}}\n")));

    static JobSpec Classification(string train, double fraction = 0.2, int seed = 1, string? validation = null, string format = "jsonl") => new()
    {
        Task = TaskKinds.Classification,
        Data = new DataSpec { Format = format, Train = train, Validation = validation, ValidationFraction = fraction },
        Training = new TrainingSpec { Seed = seed },
    };

    static JobSpec LanguageModel(string train, double fraction = 0.1, string? validation = null, string format = "text") => new()
    {
        Task = TaskKinds.LanguageModel,
        Data = new DataSpec { Format = format, Train = train, Validation = validation, ValidationFraction = fraction },
    };

    [Fact]
    public void Classification_split_is_the_same_for_the_same_seed()
    {
        WriteClassification(100);
        var a = DatasetLoader.Load(Classification("train.jsonl", seed: 5), dir.Path);
        var b = DatasetLoader.Load(Classification("train.jsonl", seed: 5), dir.Path);
        Assert.Equal(a.Train, b.Train);
        Assert.Equal(a.Validation, b.Validation);
    }

    [Fact]
    public void Classification_split_differs_for_another_seed()
    {
        WriteClassification(100);
        var a = DatasetLoader.Load(Classification("train.jsonl", seed: 5), dir.Path);
        var b = DatasetLoader.Load(Classification("train.jsonl", seed: 6), dir.Path);
        Assert.NotEqual(a.Validation.Select(r => r.Line), b.Validation.Select(r => r.Line));
    }

    [Theory]
    [InlineData(100, 0.2, 20)]
    [InlineData(101, 0.2, 21)]
    [InlineData(10, 0.01, 1)]
    [InlineData(7, 0.5, 4)]
    public void Classification_split_has_ceil_fraction_in_validation_no_overlap_and_file_order(int n, double fraction, int expectedValidation)
    {
        var path = WriteClassification(n);
        var data = DatasetLoader.Load(Classification("train.jsonl", fraction), dir.Path);
        Assert.Equal(expectedValidation, data.Validation.Count);
        Assert.Equal(n - expectedValidation, data.Train.Count);
        Assert.Empty(data.Train.Select(r => r.Line).Intersect(data.Validation.Select(r => r.Line)));
        Assert.Equal(Enumerable.Range(1, n), data.Train.Concat(data.Validation).Select(r => r.Line).Order());
        Assert.Equal(data.Train.Select(r => r.Line).Order(), data.Train.Select(r => r.Line));
        Assert.All(data.Train, r => Assert.Equal(path, r.File));
        Assert.Equal(n, data.Report.Read);
    }

    [Fact]
    public void Validation_record_whose_label_has_no_training_example_moves_to_training()
    {
        // One "rare" record among 50: whichever seed puts it in validation, it must end up in training.
        WriteClassification(50, label: i => i == 17 ? "rare" : i % 2 == 0 ? "x" : "y");
        for (var seed = 0; seed < 40; seed++)
        {
            var data = DatasetLoader.Load(Classification("train.jsonl", 0.5, seed), dir.Path);
            Assert.Contains(data.Train, r => r.Label == "rare");
            Assert.DoesNotContain(data.Validation, r => r.Label == "rare");
        }
    }

    [Fact]
    public void Validation_file_label_unknown_to_training_names_file_line_and_label()
    {
        WriteClassification(10);
        var validation = dir.Write("valid.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\"}\n{\"text\":\"c\",\"label\":\"z\"}\n");
        var e = Assert.Throws<DataFormatException>(() => DatasetLoader.Load(Classification("train.jsonl", validation: "valid.jsonl"), dir.Path));
        Assert.Equal(validation, e.File);
        Assert.Equal(3, e.Line);
        Assert.Contains("\"z\"", e.Problem);
    }

    [Fact]
    public void Validation_file_is_used_as_is_and_all_training_records_are_kept()
    {
        WriteClassification(10);
        var validation = dir.Write("valid.jsonl", "{\"text\":\"v1\",\"label\":\"x\"}\n{\"text\":\"v2\",\"label\":\"y\"}\n");
        var data = DatasetLoader.Load(Classification("train.jsonl", validation: "valid.jsonl"), dir.Path);
        Assert.Equal(10, data.Train.Count);
        Assert.Equal([new TextRecord("v1", "x", validation, 1), new TextRecord("v2", "y", validation, 2)], data.Validation);
        Assert.Equal(12, data.Report.Read);
    }

    [Fact]
    public void Classification_csv_split_reads_labels()
    {
        dir.Write("train.csv", "label,text\n" + string.Concat(Enumerable.Range(0, 20).Select(i => $"{(i % 2 == 0 ? "ham" : "spam")},\"text, {i}\"\n")));
        var data = DatasetLoader.Load(Classification("train.csv", 0.25, format: "csv"), dir.Path);
        Assert.Equal(15, data.Train.Count);
        Assert.Equal(5, data.Validation.Count);
        Assert.All(data.Train.Concat(data.Validation), r => Assert.Contains(r.Label, new[] { "ham", "spam" }));
    }

    [Fact]
    public void Language_model_split_puts_the_last_fraction_into_validation()
    {
        var text = string.Concat(Enumerable.Range(0, 100).Select(i => $"line {i:D3}\n")); // 900 chars
        var path = dir.Write("book.txt", text);
        var data = DatasetLoader.Load(LanguageModel("book.txt", 0.1), dir.Path);
        var train = Assert.Single(data.Train);
        var validation = Assert.Single(data.Validation);
        Assert.Equal(810, train.Text.Length);
        Assert.Equal(90, validation.Text.Length);
        Assert.Equal(text, train.Text + validation.Text);
        Assert.Equal((path, 1), (train.File, train.Line));
        Assert.Equal((path, 91), (validation.File, validation.Line)); // the line where validation starts
        Assert.Null(train.Label);
    }

    [Fact]
    public void Language_model_split_never_cuts_a_surrogate_pair()
    {
        dir.Write("emoji.txt", string.Concat(Enumerable.Repeat("😀", 10))); // 20 UTF-16 units
        var data = DatasetLoader.Load(LanguageModel("emoji.txt", 0.25), dir.Path); // 5 units would split a pair
        Assert.Equal(string.Concat(Enumerable.Repeat("😀", 7)), data.Train[0].Text);
        Assert.Equal(string.Concat(Enumerable.Repeat("😀", 3)), data.Validation[0].Text);
    }

    [Fact]
    public void Language_model_with_a_validation_file_keeps_all_of_the_training_text()
    {
        dir.Write("train.txt", "all of this is training text");
        dir.Write("valid.txt", "held out");
        var data = DatasetLoader.Load(LanguageModel("train.txt", validation: "valid.txt"), dir.Path);
        Assert.Equal("all of this is training text", Assert.Single(data.Train).Text);
        Assert.Equal("held out", Assert.Single(data.Validation).Text);
    }

    [Fact]
    public void Language_model_from_jsonl_joins_the_texts_with_newlines_before_splitting()
    {
        dir.Write("docs.jsonl", "{\"text\":\"aaaa\"}\n{\"text\":\"bbbb\",\"label\":\"ignored\"}\n{\"text\":\"cc\"}\n");
        var data = DatasetLoader.Load(LanguageModel("docs.jsonl", 0.3, format: "jsonl"), dir.Path);
        Assert.Equal("aaaa\nbbbb\ncc", data.Train[0].Text + data.Validation[0].Text);
        Assert.Equal("b\ncc", data.Validation[0].Text);
        Assert.Equal(2, data.Validation[0].Line); // the record the validation text starts in
    }

    [Fact]
    public void Language_model_ignores_max_length()
    {
        dir.Write("book.txt", new string('x', 5000));
        var spec = LanguageModel("book.txt");
        var data = DatasetLoader.Load(spec with { Data = spec.Data with { MaxLength = 100, Overlength = "error" } }, dir.Path);
        Assert.Equal(5000, data.Train[0].Text.Length + data.Validation[0].Text.Length);
    }

    [Fact]
    public void Relative_paths_resolve_against_the_base_directory_and_missing_files_name_the_full_path()
    {
        var e = Assert.Throws<DataFormatException>(() => DatasetLoader.Load(LanguageModel("sub/none.txt"), dir.Path));
        Assert.Equal(Path.Combine(dir.Path, "sub", "none.txt"), e.File);
        Assert.Equal(0, e.Line);
        Assert.Equal("file not found", e.Problem);
    }

    [Fact]
    public void Synthetic_recall_spec_is_generated_and_split_like_classification_data()
    {
        var spec = new JobSpec
        {
            Task = TaskKinds.Classification,
            Data = new DataSpec { Format = "synthetic", ValidationFraction = 0.1, Synthetic = new SyntheticSpec { Distance = 20, Classes = 4, Samples = 500, Seed = 3 } },
        };
        var data = DatasetLoader.Load(spec, dir.Path);
        Assert.Equal(450, data.Train.Count);
        Assert.Equal(50, data.Validation.Count);
        Assert.All(data.Train.Concat(data.Validation), r =>
        {
            Assert.Equal("synthetic:recall", r.File);
            Assert.Equal(21, r.Text.Length);
            Assert.Equal(r.Text[..1], r.Label);
        });
        Assert.Equal(SyntheticTasks.Recall(20, 4, 500, 3).Select(r => r.Text), data.Train.Concat(data.Validation).OrderBy(r => r.Line).Select(r => r.Text));
    }
}
