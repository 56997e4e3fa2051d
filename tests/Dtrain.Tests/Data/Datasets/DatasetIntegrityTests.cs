using System.Text.Json.Nodes;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using static Dtrain.Tests.Data.Datasets.PrepareTestSupport;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>A dataset that is not whole — no manifest, a missing, truncated or altered shard, an unknown version — is refused, naming the file.</summary>
public sealed class DatasetIntegrityTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    string Prepared(string task = TaskKinds.LanguageModel)
    {
        var output = Path.Combine(dir.Path, "ds");
        var source = task == TaskKinds.LanguageModel
            ? dir.Write("t.txt", string.Concat(Enumerable.Range(0, 40).Select(i => $"line {i} of the text\n")))
            : dir.Write("c.jsonl", string.Concat(Enumerable.Range(0, 40).Select(i => $"{{\"text\":\"record {i}\",\"label\":\"{i % 2}\"}}\n")));
        DatasetPreparer.Prepare(Options(output, [source]) with { Task = task });
        return output;
    }

    static DatasetException Refused(string output, bool verify = true) => Assert.Throws<DatasetException>(() => PreparedDataset.Open(output, verify).Dispose());

    [Fact]
    public void Without_a_manifest_it_is_not_a_dataset()
    {
        var output = Prepared();
        File.Delete(Path.Combine(output, DatasetLayout.ManifestFile));
        var e = Refused(output);
        Assert.Contains("has no manifest.json", e.Message);
        Assert.Contains("did not finish", e.Message);
    }

    [Fact]
    public void A_missing_shard_is_named()
    {
        var output = Prepared();
        File.Delete(Path.Combine(output, "train-00001.tokens"));
        var e = Refused(output, verify: false);
        Assert.Equal("train-00001.tokens", e.File);
        Assert.Contains("train-00001.tokens is missing", e.Message);
    }

    [Fact]
    public void A_truncated_shard_is_named_even_without_hashing()
    {
        var output = Prepared();
        var shard = Path.Combine(output, "train-00002.tokens");
        using (var f = new FileStream(shard, FileMode.Open)) f.SetLength(f.Length - 2);
        var e = Refused(output, verify: false);
        Assert.Equal("train-00002.tokens", e.File);
        Assert.Contains("is truncated", e.Message);
    }

    [Fact]
    public void An_altered_shard_or_index_fails_its_hash()
    {
        var output = Prepared(TaskKinds.Classification);
        var shard = Path.Combine(output, "validation-00000.tokens");
        var bytes = File.ReadAllBytes(shard);
        bytes[0] ^= 1;
        File.WriteAllBytes(shard, bytes);
        var e = Refused(output);
        Assert.Equal("validation-00000.tokens", e.File);
        Assert.Contains("SHA-256", e.Message);
        using (PreparedDataset.Open(output, verify: false)) { } // sizes alone do not see it

        var output2 = Path.Combine(dir.Path, "ds");
        Directory.Delete(output2, true);
        output2 = Prepared(TaskKinds.Classification);
        var labels = Path.Combine(output2, "train-00000.labels");
        var l = File.ReadAllBytes(labels);
        l[0] ^= 1;
        File.WriteAllBytes(labels, l);
        Assert.Equal("train-00000.labels", Refused(output2).File);
    }

    [Fact]
    public void An_unknown_version_is_refused_by_number()
    {
        var output = Prepared();
        var path = Path.Combine(output, DatasetLayout.ManifestFile);
        var json = JsonNode.Parse(File.ReadAllText(path))!;
        json["version"] = 99;
        File.WriteAllText(path, json.ToJsonString());
        var e = Refused(output);
        Assert.Contains("format version 99", e.Message);
        Assert.Equal(DatasetLayout.ManifestFile, e.File);
    }

    [Fact]
    public void An_id_outside_the_vocabulary_in_a_uint8_shard_is_refused_naming_the_shard_and_its_position()
    {
        var output = Prepared();
        using (var ds = PreparedDataset.Open(output)) Assert.Equal(DatasetLayout.Uint8, ds.Manifest.TokenDtype);
        var vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(output, DatasetLayout.ManifestFile)))!["vocab_size"]!.GetValue<int>();
        var bytes = File.ReadAllBytes(Path.Combine(output, "train-00001.tokens"));
        bytes[50] = (byte)vocab; // the first id past the vocabulary; size and SHA-256 rewritten, as a dataset made elsewhere
        Dtrain.Tests.Cluster.DatasetJobTests.Rewrite(output, "train-00001.tokens", bytes);
        var e = Refused(output);
        Assert.Equal("train-00001.tokens", e.File);
        Assert.Contains($"train-00001.tokens holds id {vocab} at token 50, outside the vocabulary of {vocab}", e.Message);

        bytes[50] = 0;
        bytes[bytes.Length - 1] = 255;
        Dtrain.Tests.Cluster.DatasetJobTests.Rewrite(output, "train-00001.tokens", bytes);
        Assert.Contains($"train-00001.tokens holds id 255 at token {bytes.Length - 1}, outside the vocabulary of {vocab}", Refused(output).Message);
    }

    [Fact]
    public void An_unknown_token_dtype_or_one_too_narrow_for_the_vocabulary_is_refused_naming_it()
    {
        var output = Prepared();
        var path = Path.Combine(output, DatasetLayout.ManifestFile);
        var original = File.ReadAllText(path);
        var json = JsonNode.Parse(original)!;
        json["token_dtype"] = "int8";
        File.WriteAllText(path, json.ToJsonString());
        var e = Refused(output, verify: false);
        Assert.Equal(DatasetLayout.ManifestFile, e.File);
        Assert.Contains("has token_dtype \"int8\", which this dtrain does not know (it reads uint8, uint16 and uint32)", e.Message);

        json = JsonNode.Parse(original)!;
        json["vocab_size"] = 300;
        File.WriteAllText(path, json.ToJsonString());
        Assert.Contains("says token_dtype uint8 for a vocabulary of 300: its ids do not fit", Refused(output, verify: false).Message);
    }

    [Fact]
    public void A_char_dataset_stored_with_two_byte_ids_reads_the_same_ids()
    {
        var output = Prepared();
        int[] expected;
        using (var ds = PreparedDataset.Open(output)) expected = [.. ds.Train.ReadAllTokens(), .. ds.Validation.ReadAllTokens()];
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(output, DatasetLayout.ManifestFile)))!;
        foreach (var split in new[] { "train", "validation" })
            foreach (var shard in manifest[split]!["shards"]!.AsArray())
            {
                var name = (string)shard!["tokens"]!["name"]!;
                var narrow = File.ReadAllBytes(Path.Combine(output, name));
                var wide = new byte[narrow.Length * 2];
                for (var i = 0; i < narrow.Length; i++) wide[2 * i] = narrow[i];
                Dtrain.Tests.Cluster.DatasetJobTests.Rewrite(output, name, wide, m => m["token_dtype"] = DatasetLayout.Uint16);
            }
        using var reread = PreparedDataset.Open(output);
        Assert.Equal(DatasetLayout.Uint16, reread.Manifest.TokenDtype);
        int[] read = [.. reread.Train.ReadAllTokens(), .. reread.Validation.ReadAllTokens()];
        Assert.Equal(expected, read);
    }

    [Fact]
    public void A_failed_preparation_leaves_no_output_and_no_temporary_directory()
    {
        var bad = dir.Write("bad.jsonl", "{\"text\":\"fine\"}\n{\"text\":\"fine too\"}\n{broken\n");
        var output = Path.Combine(dir.Path, "out");
        var e = Assert.Throws<DataFormatException>(() => DatasetPreparer.Prepare(Options(output, [bad])));
        Assert.Equal(bad, e.File);
        Assert.Equal(3, e.Line);
        Assert.Contains("malformed JSON", e.Message);
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetDirectories(dir.Path));
    }

    [Fact]
    public void An_existing_output_is_refused_unless_forced_and_then_replaced_whole()
    {
        var output = Prepared();
        var source = dir.Write("u.txt", "a different text, longer than before: " + new string('z', 300));
        var e = Assert.Throws<ArgumentException>(() => DatasetPreparer.Prepare(Options(output, [source])));
        Assert.Contains("exists and is not empty", e.Message);
        DatasetPreparer.Prepare(Options(output, [source]) with { Force = true });
        using var ds = PreparedDataset.Open(output);
        Assert.Equal("u.txt", Path.GetFileName(ds.Manifest.Sources.Single().Path));
        Assert.DoesNotContain(Directory.GetFiles(output), f => f.EndsWith("train-00003.tokens", StringComparison.Ordinal) && ds.Train.Shards.Count < 4);
        Assert.Single(Directory.GetDirectories(dir.Path)); // no .old-* or .partial-* left
    }

    [Fact]
    public void Invalid_utf8_is_named_by_file_line_and_offset_as_in_memory()
    {
        var file = dir.WriteBytes("bad.txt", [.. "ok\nline two\n"u8, 0xFF, .. "\n"u8]);
        var streamed = Assert.Throws<DataFormatException>(() => DatasetPreparer.Prepare(Options(Path.Combine(dir.Path, "o"), [file])));
        var inMemory = Assert.Throws<DataFormatException>(() => DatasetReader.ReadAllText(file));
        Assert.Equal(inMemory.Message, streamed.Message);
    }
}
