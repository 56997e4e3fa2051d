using System.Net.Http.Headers;
using System.Text.Json.Nodes;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Checkpoints;
using Dtrain.Tests.Support;
using Dtrain.Training;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// What a client of a real coordinator sees (the real CLI, the dashboard's API): the names the user gave its files,
/// never where the coordinator keeps them; a refused download leaves no file behind; a crafted checkpoint to resume
/// from is refused at submit naming its section, before anything reaches libtorch.
/// </summary>
public class ClientPathsTests
{
    static readonly CoordinatorOptions WithDashboard = new() { HttpPort = 0 };

    /// <summary>The CLI against <paramref name="cluster"/> with its admin token, a private HOME and no settings from the test's environment.</summary>
    static CliRunner.Result Cli(InProcessCluster cluster, string workDir, params string[] args) =>
        CliRunner.Run(workDir, TimeSpan.FromMinutes(3), new Dictionary<string, string?>
        {
            ["HOME"] = workDir,
            ["XDG_CONFIG_HOME"] = Path.Combine(workDir, ".config"),
            ["DTRAIN_COORDINATOR"] = cluster.Address,
            ["DTRAIN_TOKEN"] = cluster.AdminToken,
            ["DTRAIN_TOKEN_FILE"] = null,
            ["DTRAIN_TLS_DIR"] = null,
        }, args);

    /// <summary>A tiny character LM in specs/lm.json whose data is ../data/t.txt (relative to the spec, as users write it).</summary>
    static string WriteJob(TempDir tmp, int steps = 4)
    {
        Directory.CreateDirectory(Path.Combine(tmp.Path, "data"));
        Directory.CreateDirectory(Path.Combine(tmp.Path, "specs"));
        tmp.Write("data/t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("../data/t.txt", steps: steps) with { Name = "paths", Training = TestJobs.CharLm("x").Training with { MaxSteps = steps, CheckpointInterval = 2 } };
        tmp.Write("specs/lm.json", JobSpecSerializer.Serialize(spec));
        return Path.Combine(tmp.Path, "data", "t.txt");
    }

    /// <summary>Submits specs/lm.json (see <see cref="WriteJob"/>) to one worker through the CLI; the job's id.</summary>
    static string Submit(InProcessCluster cluster, TempDir tmp)
    {
        var submit = Cli(cluster, tmp.Path, "submit", "specs/lm.json", "--workers", "1");
        Assert.True(submit.ExitCode == 0, submit.ToString());
        return submit.Stdout.Trim();
    }

    [Fact]
    public async Task Status_list_watch_the_api_and_a_downloaded_model_name_the_data_as_the_user_did_and_no_coordinator_path()
    {
        using var tmp = new TempDir();
        var data = WriteJob(tmp);
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard);
        var id = Submit(cluster, tmp);
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(3));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
        var dataDir = Path.GetFullPath(cluster.DataDir);

        var status = Cli(cluster, tmp.Path, "status", id);
        Assert.True(status.ExitCode == 0, status.ToString());
        Assert.Contains($"  checkpoint: ckpt-000000004.dtck (`dtrain download {id}` fetches it)", status.Stdout);
        foreach (var shown in new[] { status, Cli(cluster, tmp.Path, "list"), Cli(cluster, tmp.Path, "watch", id, "--plain") })
        {
            Assert.True(shown.ExitCode == 0, shown.ToString());
            Assert.DoesNotContain(dataDir, shown.Stdout + shown.Stderr);
        }
        Assert.Equal("ckpt-000000004.dtck", info.Checkpoint);

        using var http = new HttpClient { BaseAddress = new Uri(cluster.HttpAddress!) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", cluster.AdminToken);
        foreach (var api in new[] { $"/api/jobs/{id}", "/api/jobs", $"/api/jobs/{id}/history" })
        {
            var body = await http.GetStringAsync(api);
            Assert.DoesNotContain(dataDir, body);
        }
        var detail = JsonNode.Parse(await http.GetStringAsync($"/api/jobs/{id}"))!;
        // The spec as the user wrote it: the data as it names it.
        Assert.Equal("../data/t.txt", (string?)detail["spec"]!["data"]!["train"]);
        Assert.Null(detail["spec"]!["output"]);

        // The model names that file as it is on the submitting machine: eval there finds the data ...
        var download = Cli(cluster, tmp.Path, "download", id, "-o", "model.dtck");
        Assert.True(download.ExitCode == 0, download.ToString());
        var eval = Cli(cluster, tmp.Path, "eval", "model.dtck");
        Assert.True(eval.ExitCode == 0, eval.ToString());
        Assert.Contains("on the job's validation split", eval.Stdout);
        // ... and, where it is not (another machine), says which file and what to do, naming nothing of the coordinator's.
        File.Move(data, Path.Combine(tmp.Path, "moved.txt"));
        var elsewhere = Cli(cluster, tmp.Path, "eval", "model.dtck");
        Assert.True(elsewhere.ExitCode == 2, elsewhere.ToString());
        Assert.Contains($"model.dtck was trained on \"{data}\" (data.train of its spec), which is not on this machine: give the file to evaluate on with --data FILE", elsewhere.Stderr);
        Assert.DoesNotContain(dataDir, elsewhere.Stderr);
        var withData = Cli(cluster, tmp.Path, "eval", "model.dtck", "--data", "moved.txt");
        Assert.True(withData.ExitCode == 0, withData.ToString());

        // The dashboard's sample of a checkpoint it cannot read names the checkpoint, not where it is.
        CheckpointSectionTests.Rewrite(cluster.CheckpointFile(info), TrainingCheckpoint.Model, bytes => bytes[..^9]);
        var sample = JsonNode.Parse(await http.GetStringAsync($"/api/jobs/{id}/sample"))!;
        Assert.StartsWith("(no sample: corrupt checkpoint ckpt-000000004.dtck: section model.bin: ", (string?)sample["text"]);
    }

    [Fact]
    public async Task A_jobs_messages_name_its_checkpoints_and_data_without_the_coordinators_directory()
    {
        using var tmp = new TempDir();
        WriteJob(tmp);
        await using var cluster = await InProcessCluster.StartAsync(1);
        var id = Submit(cluster, tmp);
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(id, TimeSpan.FromMinutes(3))).State);
        // A job resumed from it: its log names the checkpoint it loaded; and a refusal names the job's checkpoint.
        var resumed = Cli(cluster, tmp.Path, "resume", id);
        Assert.True(resumed.ExitCode == 2, resumed.ToString());
        Assert.Contains("nothing left to train", resumed.Stderr);
        Assert.DoesNotContain(Path.GetFullPath(cluster.DataDir), resumed.Stderr);
        var watch = Cli(cluster, tmp.Path, "watch", id, "--plain");
        Assert.Contains("checkpoint job-0001/checkpoints/ckpt-000000002.dtck", watch.Stdout);
        Assert.DoesNotContain(Path.GetFullPath(cluster.DataDir), watch.Stdout);
    }

    [Fact]
    public async Task A_refused_download_leaves_no_file_behind()
    {
        using var tmp = new TempDir();
        WriteJob(tmp);
        // No worker: the job stays queued, with no checkpoint yet.
        await using var cluster = await InProcessCluster.StartAsync(0);
        var id = Submit(cluster, tmp);
        foreach (var (job, target, says) in new[] { (id, "out/model.dtck", "has no checkpoint yet"), ("job-0077", "other.dtck", "no job") })
        {
            var refused = Cli(cluster, tmp.Path, "download", job, "-o", target);
            Assert.True(refused.ExitCode != 0, refused.ToString());
            Assert.Contains(says, refused.Stderr);
            Assert.False(File.Exists(Path.Combine(tmp.Path, target + ".part")), $"{target}.part left behind: {refused}");
            Assert.False(File.Exists(Path.Combine(tmp.Path, target)), refused.ToString());
        }
        // A file already at the target stays as it was.
        tmp.Write("kept.dtck", "earlier");
        var over = Cli(cluster, tmp.Path, "download", id, "-o", "kept.dtck");
        Assert.True(over.ExitCode != 0, over.ToString());
        Assert.Equal("earlier", File.ReadAllText(Path.Combine(tmp.Path, "kept.dtck")));
        Assert.False(File.Exists(Path.Combine(tmp.Path, "kept.dtck.part")));
    }

    /// <summary>A checkpoint with a crafted section, under a valid checksum (so the file itself reads).</summary>
    public static TheoryData<string, string> Crafted => new()
    {
        // Another optimizer's state: TorchSharp's own reader failed with "Mismatched optimizer type: expected 'Adam', but found 'k,8,…'".
        { TrainingCheckpoint.Optimizer, "is the state of optimizer" },
        { TrainingCheckpoint.Rng, "this torch's RNG state has" },
        { TrainingCheckpoint.Model, "truncated" },
    };

    [Theory]
    [MemberData(nameof(Crafted))]
    public async Task A_crafted_checkpoint_to_resume_from_is_refused_at_submit_naming_its_section(string section, string says)
    {
        using var tmp = new TempDir();
        WriteJob(tmp);
        var local = Path.Combine(tmp.Path, "local");
        var spec = JobSpecSerializer.Load(Path.Combine(tmp.Path, "specs", "lm.json"));
        var checkpoint = Trainer.Run(spec with { Training = spec.Training with { MaxSteps = 2 } }, Path.Combine(tmp.Path, "specs"),
            new TrainOptions { OutputDir = local }, new Quiet(), CancellationToken.None).Checkpoint!;
        var random = new Random(7);
        CheckpointSectionTests.Rewrite(checkpoint, section, bytes => section switch
        {
            TrainingCheckpoint.Optimizer => [3, (byte)'k', (byte)',', (byte)'8', .. bytes[4..]],
            TrainingCheckpoint.Rng => Enumerable.Range(0, 4096).Select(_ => (byte)random.Next(256)).ToArray(),
            _ => bytes[..^9],
        });

        await using var cluster = await InProcessCluster.StartAsync(1);
        var submit = Cli(cluster, tmp.Path, "submit", "specs/lm.json", "--workers", "1", "--resume", checkpoint);
        Assert.True(submit.ExitCode == 2, submit.ToString());
        Assert.Contains($"cannot resume from an uploaded checkpoint: section {section}: ", submit.Stderr);
        Assert.Contains(says, submit.Stderr);
        Assert.DoesNotContain("Mismatched", submit.Stderr);
        Assert.DoesNotContain(Path.GetFullPath(cluster.DataDir), submit.Stderr);
        // Refused before it was queued, and the coordinator is still there.
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
        Assert.Single(cluster.Client.ListWorkers(new ListWorkersRequest()).Workers);
    }

    [Fact]
    public async Task Resuming_a_job_whose_checkpoint_was_tampered_with_is_refused_naming_the_section()
    {
        using var tmp = new TempDir();
        WriteJob(tmp, steps: 2);
        await using var cluster = await InProcessCluster.StartAsync(1);
        var id = Submit(cluster, tmp);
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(id, TimeSpan.FromMinutes(3))).State);
        var file = Path.Combine(cluster.DataDir, "jobs", id, "checkpoints", "ckpt-000000002.dtck");
        CheckpointSectionTests.Rewrite(file, TrainingCheckpoint.Rng, bytes => [.. bytes[..8], 0, 0, 0, 0, .. bytes[12..]]);
        var resume = Cli(cluster, tmp.Path, "resume", id);
        Assert.True(resume.ExitCode == 2, resume.ToString());
        Assert.Contains($"cannot resume from {id} (ckpt-000000002.dtck): section rng.bin: is not a valid mt19937 state", resume.Stderr);
        Assert.Single(cluster.Client.List(new ListJobsRequest()).Jobs);
    }

    sealed class Quiet : ITrainingObserver;
}
