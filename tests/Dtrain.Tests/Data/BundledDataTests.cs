using Dtrain.Data;
using Dtrain.Specs;

using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data;

/// <summary>The datasets committed under data/ load through the same code path as a job's data.</summary>
public class BundledDataTests
{
    static string DataDir => RepoFiles.PathOf("data");

    [Fact]
    public void Moby_dick_loads_as_a_language_model_corpus()
    {
        var spec = new JobSpec { Task = TaskKinds.LanguageModel, Data = new DataSpec { Format = "text", Train = "moby-dick/moby-dick.txt", ValidationFraction = 0.05 } };
        var data = DatasetLoader.Load(spec, DataDir);
        var text = data.Train[0].Text + data.Validation[0].Text;
        Assert.InRange(text.Length, 1_150_000, 1_300_000);
        Assert.StartsWith("ETYMOLOGY.", text);
        Assert.Contains("Call me Ishmael.", data.Train[0].Text);
        Assert.Contains("CHAPTER 135.", text);
        Assert.EndsWith("orphan.\n", text);
        Assert.DoesNotContain('\r', text);
        Assert.Equal((int)Math.Ceiling(text.Length * 0.05), data.Validation[0].Text.Length);
    }

    [Fact]
    public void Spam_assassin_jsonl_has_both_classes_and_over_4000_records()
    {
        var spec = new JobSpec { Task = TaskKinds.Classification, Data = new DataSpec { Format = "jsonl", Train = "spam-assassin/spam-assassin.jsonl", ValidationFraction = 0.1 } };
        var data = DatasetLoader.Load(spec, DataDir);
        var all = data.Train.Concat(data.Validation).ToList();
        Assert.Equal(6046, all.Count);
        Assert.Equal(0, data.Report.Skipped);
        Assert.Equal(0, data.Report.Truncated); // texts are at most 1,500 characters, below the default max_length
        var counts = all.GroupBy(r => r.Label!).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(new Dictionary<string, int> { ["ham"] = 4150, ["spam"] = 1896 }, counts);
        Assert.Equal(["ham", "spam"], data.Validation.Select(r => r.Label).Distinct().Order());
        Assert.All(all, r => Assert.StartsWith("Subject:", r.Text));
    }

    [Fact]
    public void Spam_assassin_csv_sample_reads_through_the_csv_reader()
    {
        var path = Path.Combine(DataDir, "spam-assassin", "sample.csv");
        var records = DatasetReader.Read(path, new ReadOptions { Format = "csv", LabelField = "label" }, new DataReportBuilder());
        Assert.Equal(200, records.Count);
        Assert.Equal(Enumerable.Range(2, 200), records.Select(r => r.Line));
        Assert.Equal(["ham", "spam"], records.Select(r => r.Label).Distinct().Order());
        Assert.Contains(records, r => r.Text.Contains('"'));
        Assert.Contains(records, r => r.Text.Contains(','));
    }

    [Fact]
    public void Word_tokenizer_fits_the_spam_corpus_with_every_id_in_range()
    {
        var spec = new JobSpec { Task = TaskKinds.Classification, Data = new DataSpec { Format = "jsonl", Train = "spam-assassin/spam-assassin.jsonl" } };
        var data = DatasetLoader.Load(spec, DataDir);
        var tok = TokenizerFactory.Fit(new TokenizerSpec { Kind = "word", MinFrequency = 2, MaxVocab = 20_000, Lowercase = true }, data.Train.Select(r => r.Text));
        Assert.Equal(20_000, tok.VocabSize);
        Assert.All(data.Validation, r => Assert.All(tok.Encode(r.Text), id => Assert.InRange(id, 0, tok.VocabSize - 1)));
    }
}
