using System.Diagnostics;
using Dtrain.Data;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace Dtrain.Tests.Security;

/// <summary>
/// What the coordinator reads for a job, tried as an anonymous client over raw gRPC would: only uploaded files, plus
/// regular files under the operator's data roots; nothing else is read, revealed or waited on.
/// </summary>
public class DataGateTests
{
    static SubmitRequest Raw(JobSpec spec, int workers = 1) => new() { SpecJson = JobSpecSerializer.Serialize(spec), Workers = workers, Source = "attack.json" };

    static JobSpec Lm(string train, string format = DataFormats.Text, string tokenizer = TokenizerKinds.Char)
    {
        var spec = TestJobs.CharLm(train, steps: 3);
        return spec with { Data = spec.Data with { Format = format }, Tokenizer = new TokenizerSpec { Kind = tokenizer } };
    }

    static RpcException Refused(InProcessCluster cluster, SubmitRequest request)
    {
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(request));
        Assert.True(e.StatusCode == StatusCode.InvalidArgument, e.ToString());
        return e;
    }

    static void MkFifo(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("mkfifo", [path]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"mkfifo {path} failed");
    }

    [Fact]
    public async Task Etc_passwd_is_refused_at_submit_naming_the_field_without_its_content_or_whether_it_exists()
    {
        await using var cluster = await InProcessCluster.StartAsync(0);
        var firstLine = File.ReadLines("/etc/passwd").First();
        var user = firstLine.Split(':')[0];
        foreach (var spec in new[] { Lm("/etc/passwd", DataFormats.Csv), Lm("/etc/passwd", DataFormats.Text, TokenizerKinds.Word), Lm("/etc/passwd", DataFormats.Jsonl) })
        {
            var detail = Refused(cluster, Raw(spec)).Status.Detail;
            Assert.Contains("$.data.train", detail);
            Assert.Contains("--data-root", detail);
            Assert.DoesNotContain(firstLine, detail);
            Assert.DoesNotContain(user + ":", detail);
            // A file that does not exist gets the very same answer: nothing is revealed about the host.
            var missing = Refused(cluster, Raw(spec with { Data = spec.Data with { Train = "/etc/no-such-file-dtrain" } })).Status.Detail;
            Assert.Equal(detail.Replace("/etc/passwd", "X", StringComparison.Ordinal), missing.Replace("/etc/no-such-file-dtrain", "X", StringComparison.Ordinal));
        }
        // The validation file is checked the same way, and nothing was queued.
        var both = Lm("/etc/passwd") with { Data = new DataSpec { Format = DataFormats.Text, Train = "/etc/hostname", Validation = "/etc/passwd" } };
        Assert.Contains("$.data.", Refused(cluster, Raw(both)).Status.Detail);
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
    }

    [Fact]
    public async Task A_file_under_a_data_root_trains_while_paths_leading_outside_are_refused_alike()
    {
        using var tmp = new TempDir();
        var root = Directory.CreateDirectory(Path.Combine(tmp.Path, "root")).FullName;
        var outside = Directory.CreateDirectory(Path.Combine(tmp.Path, "outside")).FullName;
        File.WriteAllText(Path.Combine(root, "train.txt"), TestJobs.Text());
        File.WriteAllText(Path.Combine(outside, "secret.txt"), TestJobs.Text());
        File.CreateSymbolicLink(Path.Combine(root, "link.txt"), Path.Combine(outside, "secret.txt"));
        Directory.CreateSymbolicLink(Path.Combine(root, "dirlink"), outside);
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { DataRoots = [root] });

        var id = cluster.Client.Submit(Raw(Lm(Path.Combine(root, "train.txt")))).JobId;
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");

        var attempts = new[]
        {
            Path.Combine(outside, "secret.txt"),               // plainly outside
            $"{root}/../outside/secret.txt",                   // climbing out with ..
            Path.Combine(root, "link.txt"),                    // a symlink inside pointing out
            Path.Combine(root, "dirlink", "secret.txt"),       // through a symlinked directory
            Path.Combine(root, "dirlink", "missing.txt"),      // ... to a file that does not exist
            Path.Combine(outside, "missing.txt"),              // outside and missing
            "/etc/passwd",
        };
        foreach (var path in attempts)
        {
            var detail = Refused(cluster, Raw(Lm(path))).Status.Detail;
            Assert.Contains("$.data.train", detail);
            Assert.Contains("is not under the coordinator's data roots", detail);
        }
        // A relative path cannot name a file on the coordinator.
        Assert.Contains("absolute path", Refused(cluster, Raw(Lm("train.txt"))).Status.Detail);
        // Inside a root, a missing file is simply missing.
        Assert.Contains("no such file", Refused(cluster, Raw(Lm(Path.Combine(root, "nope.txt")))).Status.Detail);
    }

    [Fact]
    public async Task Fifos_devices_directories_and_oversized_files_are_refused_at_submit_even_under_a_data_root()
    {
        using var tmp = new TempDir();
        var root = Directory.CreateDirectory(Path.Combine(tmp.Path, "root")).FullName;
        var fifo = Path.Combine(root, "pipe");
        MkFifo(fifo);
        Directory.CreateDirectory(Path.Combine(root, "sub"));
        File.WriteAllText(Path.Combine(root, "big.txt"), new string('a', 5000));
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [root, "/dev"], MaxDataFileBytes = 4096, MaxUploadBytes = 4096, MaxPendingUploadBytes = 4096 });

        Assert.Contains("is a FIFO (named pipe), not a regular file", Refused(cluster, Raw(Lm(fifo))).Status.Detail);
        Assert.Contains("is a character device, not a regular file", Refused(cluster, Raw(Lm("/dev/zero"))).Status.Detail);
        Assert.Contains("is a directory, not a regular file", Refused(cluster, Raw(Lm(Path.Combine(root, "sub")))).Status.Detail);
        var big = Refused(cluster, Raw(Lm(Path.Combine(root, "big.txt")))).Status.Detail;
        Assert.Contains("5,000 bytes", big);
        Assert.Contains("Coordinator:MaxDataFileBytes", big);
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
    }

    [Fact]
    public async Task Data_errors_quote_content_only_from_files_the_submitter_uploaded()
    {
        using var tmp = new TempDir();
        var root = Directory.CreateDirectory(Path.Combine(tmp.Path, "root")).FullName;
        const string csv = "secret_column,label\nhello,a\nworld,b\n";
        File.WriteAllText(Path.Combine(root, "data.csv"), csv);
        tmp.Write("data.csv", csv);
        const string jsonl = "{\"text\":\"fine\",\"label\":\"a\"}\n{\"text\":\"ok\",\"label\":\"b\"}\n{\"text\": 12345678}\n";
        File.WriteAllText(Path.Combine(root, "data.jsonl"), jsonl);
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { DataRoots = [root] });

        // A data-root file: file, line and field, never its content.
        var clf = TestJobs.Classifier(Path.Combine(root, "data.csv"), DataFormats.Csv);
        var info = await cluster.WaitAsync(cluster.Client.Submit(Raw(clf)).JobId, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains($"{Path.Combine(root, "data.csv")}:1: no column 'text' in header (it has 2 columns)", info.Message);
        Assert.DoesNotContain("secret_column", info.Message);

        var json = TestJobs.Classifier(Path.Combine(root, "data.jsonl"));
        info = await cluster.WaitAsync(cluster.Client.Submit(Raw(json)).JobId, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains(":3: field 'text' must be a string, found a number", info.Message);
        Assert.DoesNotContain("12345678", info.Message);

        // The same file uploaded by the submitter: the offending value is quoted, as for local training.
        var spec = tmp.Write("up.json", JobSpecSerializer.Serialize(TestJobs.Classifier("data.csv", DataFormats.Csv) with { Name = "up" }));
        var request = Dtrain.Cli.JobCommands.BuildSubmit(cluster.Client, new FileInfo(spec), 1);
        info = await cluster.WaitAsync(cluster.Client.Submit(request).JobId, TimeSpan.FromMinutes(1));
        Assert.Equal(JobState.Failed, info.State);
        Assert.Contains("columns are: secret_column, label", info.Message);
    }

    [Fact]
    public async Task Cancel_while_preparing_stops_reading_the_data()
    {
        using var tmp = new TempDir();
        var root = Directory.CreateDirectory(Path.Combine(tmp.Path, "root")).FullName;
        var chunks = 8;
        var text = TestJobs.Text(chunks * DataFile.ChunkBytes / TestJobs.Text(1).Length + 1);
        File.WriteAllText(Path.Combine(root, "big.txt"), text);
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { DataRoots = [root] });
        var id = "";
        var read = 0;
        var statesWhileReading = new List<JobState>();
        cluster.Services.GetRequiredService<DataAccess>().ChunkRead += (job, progress) =>
        {
            if (job != Volatile.Read(ref id)) return;
            // The user cancels while the coordinator reads the first chunk of a file of many.
            if (Interlocked.Increment(ref read) == 1)
            {
                lock (statesWhileReading) statesWhileReading.Add(cluster.Client.Get(new GetJobRequest { JobId = job }).State);
                cluster.Client.Cancel(new CancelJobRequest { JobId = job });
            }
        };
        // The id is known only after Submit returns; the job cannot start before it is queued, but make sure.
        var submitted = cluster.Client.Submit(Raw(Lm(Path.Combine(root, "big.txt")) with { Name = "big" }, workers: 2)).JobId;
        Volatile.Write(ref id, submitted);
        await cluster.AddWorkerAsync();

        var info = await cluster.WaitAsync(submitted, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Cancelled, $"{info.State}: {info.Message}");
        Assert.Equal("cancelled by user", info.Message);
        Assert.Equal([JobState.Preparing], statesWhileReading);
        // Reading stopped at the next chunk: the rest of the file was never read.
        Assert.Equal(1, Volatile.Read(ref read));
        Assert.Equal(0, info.Step);
        // The workers are free again.
        await cluster.WaitForIdleAsync(2, TimeSpan.FromSeconds(30));
    }
}
