using System.Diagnostics;
using Dtrain.Data;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Security;

/// <summary>The shared readers, as `dtrain train` uses them: only regular files, within a size limit, failing fast.</summary>
public class LocalDataFileTests
{
    static string Spec(TempDir tmp, string train) => tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm(train, steps: 2) with { Output = "out" }));

    [Fact]
    public void Train_on_dev_zero_fails_at_once_naming_the_file()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "train", Spec(tmp, "/dev/zero"), "--plain");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("/dev/zero: is a character device, not a regular file", r.Stderr);
    }

    [Fact]
    public void Train_on_a_fifo_fails_at_once_instead_of_waiting_for_a_writer()
    {
        using var tmp = new TempDir();
        var fifo = Path.Combine(tmp.Path, "pipe");
        using (var p = Process.Start(new ProcessStartInfo("mkfifo", [fifo]) { UseShellExecute = false })!)
        {
            p.WaitForExit();
            Assert.Equal(0, p.ExitCode);
        }
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "train", Spec(tmp, "pipe"), "--plain");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains($"{fifo}: is a FIFO (named pipe), not a regular file", r.Stderr);
    }

    [Fact]
    public void Train_on_a_file_over_the_size_limit_fails_before_reading_it()
    {
        using var tmp = new TempDir();
        // Sparse: no disk space used, and nothing is read before the refusal.
        using (var f = File.Create(Path.Combine(tmp.Path, "huge.txt"))) f.SetLength(DataFile.DefaultMaxBytes + 1);
        var r = CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(1), "train", Spec(tmp, "huge.txt"), "--plain");
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("huge.txt: is 1,073,741,825 bytes, over the 1 GiB limit on a data file", r.Stderr);
    }

    [Fact]
    public void Readers_without_quoting_name_line_and_field_but_no_content()
    {
        using var tmp = new TempDir();
        var quiet = new ReadOptions { Format = DataFormats.Jsonl, LabelField = "label", QuoteContent = false };
        var loud = quiet with { QuoteContent = true };
        foreach (var (content, line, expected, secret) in new[]
        {
            ("{\"text\":\"a\",\"label\":\"x\"}\nSECRET-LINE\n", 2, "malformed JSON (at byte 1 of the line)", "'S'"),
            ("{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":987654}\n{\"text\":31337,\"label\":\"x\"}\n", 3, "field 'text' must be a string, found a number", "31337"),
            ("{\"text\":\"a\",\"label\":1.5}\n", 1, "field 'label' must be a string, integer or boolean, found a number", "1.5"),
        })
        {
            var path = tmp.Write("d.jsonl", content);
            var e = Assert.Throws<DataFormatException>(() => DatasetReader.Read(path, quiet, new DataReportBuilder()));
            Assert.Equal(line, e.Line);
            Assert.Equal(expected, e.Problem);
            Assert.Contains(secret, Assert.Throws<DataFormatException>(() => DatasetReader.Read(path, loud, new DataReportBuilder())).Problem);
        }
        var csv = tmp.Write("d.csv", "text,label\n\"a\"SECRET,x\n");
        var c = Assert.Throws<DataFormatException>(() => DatasetReader.Read(csv, new ReadOptions { Format = DataFormats.Csv, LabelField = "label", QuoteContent = false }, new DataReportBuilder()));
        Assert.Equal("unexpected character after a closing quote (a quote inside a quoted field must be doubled)", c.Problem);
    }
}
