using System.Diagnostics;
using System.Text.Json;
using Dtrain.Data.Datasets;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Data.Datasets;

/// <summary>`dtrain prepare` as a real process, and the Python reader of docs/data.md on what it wrote.</summary>
public sealed class PrepareCliTests : IDisposable
{
    readonly TempDir dir = new();

    public void Dispose() => dir.Dispose();

    [Fact]
    public void Prepare_writes_a_dataset_the_python_reader_reads_as_the_csharp_reader_does()
    {
        var spam = RepoFiles.PathOf("data", "spam-assassin", "spam-assassin.jsonl");
        var moby = dir.Write("moby.txt", File.ReadAllText(RepoFiles.PathOf("data", "moby-dick", "moby-dick.txt"))[..200_000]);
        var cls = Path.Combine(dir.Path, "cls");
        var lm = Path.Combine(dir.Path, "lm");
        var r = CliRunner.Run(dir.Path, "prepare", spam, "-o", cls, "--task", "classification", "--tokenizer", "word", "--max-vocab", "5000", "--shard-tokens", "100000", "--threads", "2");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("pass 3/3", r.Stderr);
        r = CliRunner.Run(dir.Path, "prepare", moby, "-o", lm, "--shard-tokens", "50000");
        Assert.True(r.ExitCode == 0, r.ToString());

        foreach (var output in new[] { cls, lm })
        {
            using var ds = PreparedDataset.Open(output);
            // The char dataset's ids take 1 byte (numpy uint8), the word vocabulary of 5,000 tokens' 2.
            Assert.Equal(output == lm ? DatasetLayout.Uint8 : DatasetLayout.Uint16, ds.Manifest.TokenDtype);
            PrepareTestSupport.AssertNarrowest(ds);
            using var doc = JsonDocument.Parse(Python(output));
            var root = doc.RootElement;
            Assert.Equal(ds.Tokenizer.ToState().Tokens, root.GetProperty("vocab").EnumerateArray().Select(e => e.GetString()!));
            Assert.Equal(ds.Labels.Names, root.GetProperty("labels").EnumerateArray().Select(e => e.GetString()!));
            foreach (var (name, split) in new[] { ("train", ds.Train), ("validation", ds.Validation) })
            {
                var py = root.GetProperty(name);
                if (output == lm)
                {
                    Assert.Equal(split.ReadAllTokens(), py.EnumerateArray().Select(e => e.GetInt32()));
                    continue;
                }
                var records = split.ReadAllRecords().ToList();
                Assert.Equal(records.Count, py.GetArrayLength());
                var k = 0;
                foreach (var rec in py.EnumerateArray())
                {
                    Assert.Equal(records[k].Ids, rec[0].EnumerateArray().Select(e => e.GetInt32()));
                    Assert.Equal(records[k].Label, rec[1].GetInt32());
                    k++;
                }
            }
            Assert.True(ds.Train.Shards.Count > 1);
        }
    }

    [Fact]
    public void Prepare_refuses_bad_input_and_a_non_empty_output_with_exit_2()
    {
        var bad = dir.Write("bad.csv", "text,label\n\"fine\",a\n\"never closed,b\n");
        var r = CliRunner.Run(dir.Path, "prepare", bad, "-o", "out", "--task", "classification");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains($"{bad}:3: unterminated quoted field", r.Stderr);
        Assert.False(Directory.Exists(Path.Combine(dir.Path, "out")));

        Directory.CreateDirectory(Path.Combine(dir.Path, "full"));
        File.WriteAllText(Path.Combine(dir.Path, "full", "keep.txt"), "mine");
        var ok = dir.Write("ok.txt", "some text to prepare, long enough");
        r = CliRunner.Run(dir.Path, "prepare", ok, "-o", "full");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("exists and is not empty", r.Stderr);
        Assert.Contains("--force", r.Stderr);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(dir.Path, "full", "keep.txt")));

        r = CliRunner.Run(dir.Path, "prepare", ok, "-o", "lm", "--max-length", "10");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--max-length applies to classification", r.Stderr);

        // A thread count out of range is refused before anything is read or written (100,000 threads used to be started).
        foreach (var threads in new[] { "0", "1025" })
        {
            r = CliRunner.Run(dir.Path, "prepare", ok, "-o", "t" + threads, "--threads", threads);
            Assert.Equal(2, r.ExitCode);
            Assert.Contains($"--threads {threads} must be from 1 to 1024", r.Stderr);
            Assert.False(Directory.Exists(Path.Combine(dir.Path, "t" + threads)));
        }
    }

    [Fact]
    public void The_python_reader_reads_versions_1_and_2_and_verifies_each_block_of_version_2()
    {
        var file = dir.Write("t.txt", string.Concat(Enumerable.Range(0, 200).Select(i => $"Line {i}: some words {i % 7}\n")));
        var o = PrepareTestSupport.Options(Path.Combine(dir.Path, "ds"), [file]) with { ShardTokens = 400, BlockBytes = 64 };
        DatasetPreparer.Prepare(o);
        Assert.Contains("\"train\"", Python(o.Output));
        var path = Path.Combine(o.Output, DatasetLayout.ManifestFile);
        var good = File.ReadAllText(path);
        // The whole file's SHA-256 right, block 2's not: --verify names the block.
        var m = System.Text.Json.Nodes.JsonNode.Parse(good)!;
        m["train"]!["shards"]![0]!["tokens"]!["block_sha256"]![2] = new string('0', 64);
        File.WriteAllText(path, m.ToJsonString());
        var (code, stderr) = PythonFails(o.Output);
        Assert.NotEqual(0, code);
        Assert.Contains($"{o.Output}: train-00000.tokens block 2 (bytes 128-191) does not match its SHA-256", stderr);
        // Version 1 (no block hashes) is read and verified whole; version 3 is refused naming it.
        File.WriteAllText(path, good);
        PrepareTestSupport.AsVersion1(o.Output);
        Assert.Contains("\"train\"", Python(o.Output));
        m = System.Text.Json.Nodes.JsonNode.Parse(good)!;
        m["version"] = 3;
        File.WriteAllText(path, m.ToJsonString());
        (code, stderr) = PythonFails(o.Output);
        Assert.NotEqual(0, code);
        Assert.Contains("format version 3 is unknown (this reader knows 1, 2)", stderr);
    }

    static (int Code, string Stderr) PythonFails(string dataset)
    {
        var psi = new ProcessStartInfo(PythonWithNumpy()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { RepoFiles.PathOf("scripts", "read_dataset.py"), dataset, "--verify" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(2)), "python3 scripts/read_dataset.py did not finish");
        _ = stdout.Result;
        return (p.ExitCode, stderr.Result);
    }

    /// <summary>A Python 3 with numpy: the one on PATH, else Debian's (python3-numpy, which scripts/test-tools.sh installs, is for /usr/bin/python3).</summary>
    static string PythonWithNumpy()
    {
        foreach (var candidate in new[] { "python3", "/usr/bin/python3" })
        {
            try
            {
                var check = new ProcessStartInfo(candidate) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                check.ArgumentList.Add("-c");
                check.ArgumentList.Add("import numpy");
                using var p = Process.Start(check)!;
                if (p.WaitForExit(TimeSpan.FromMinutes(1)) && p.ExitCode == 0) return candidate;
            }
            catch (System.ComponentModel.Win32Exception) { }
        }
        return "python3";
    }

    static string Python(string dataset)
    {
        var psi = new ProcessStartInfo(PythonWithNumpy()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { RepoFiles.PathOf("scripts", "read_dataset.py"), dataset, "--json", "--verify" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(2)), "python3 scripts/read_dataset.py did not finish");
        Assert.True(p.ExitCode == 0, $"python3 scripts/read_dataset.py failed (numpy missing? scripts/test-tools.sh installs it): {stderr.Result}");
        return stdout.Result;
    }
}
