using System.Diagnostics;
using Dtrain.Data;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Grpc.Core;

namespace Dtrain.Tests.Security;

/// <summary>
/// A submitter with write access under a data root tries to make a queued job read a file outside it (the cluster CA's
/// key came back in a checkpoint's vocabulary that way): by swapping the checked file or a directory on its path for a
/// symbolic link after submit, or by a hard link; and an operator who put the coordinator's own secrets under a root.
/// The job fails (or the submission is refused) naming why; nothing outside the root is read.
/// </summary>
public class DataRootEscapeTests
{
    // Upper case and punctuation the training text never has: a job that read it would have them in its vocabulary.
    static readonly string Secret = string.Concat(Enumerable.Repeat("-----BEGIN PRIVATE KEY----- QZXJ#@!{} ", 80));

    static SubmitRequest Raw(JobSpec spec) => new() { SpecJson = JobSpecSerializer.Serialize(spec), Workers = 1, Source = "attack.json" };

    static JobSpec Lm(string train) => TestJobs.CharLm(train, steps: 3);

    static void Link(string target, string name)
    {
        using var p = Process.Start(new ProcessStartInfo("ln", [target, name]) { UseShellExecute = false })!;
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"ln {target} {name} failed");
    }

    static string Refused(InProcessCluster cluster, SubmitRequest request)
    {
        var e = Assert.Throws<RpcException>(() => cluster.Client.Submit(request));
        Assert.True(e.StatusCode == StatusCode.InvalidArgument, e.ToString());
        Assert.Contains("$.data.train", e.Status.Detail);
        return e.Status.Detail;
    }

    /// <summary>A data root holding train.txt (training text), and beside it, outside the root, <paramref name="outsideFile"/> holding the secret.</summary>
    static (string Root, string Outside, string Train) RootAndOutside(TempDir tmp, string outsideFile)
    {
        var root = Directory.CreateDirectory(Path.Combine(tmp.Path, "root")).FullName;
        var outside = Directory.CreateDirectory(Path.Combine(tmp.Path, "outside")).FullName;
        var train = Path.Combine(root, "train.txt");
        File.WriteAllText(train, TestJobs.Text());
        File.WriteAllText(Path.Combine(outside, outsideFile), Secret);
        return (root, outside, train);
    }

    /// <summary>The job failed naming each of <paramref name="reasons"/>, with nothing of a secret in its message and no checkpoint.</summary>
    static void FailedWithoutReading(JobInfo info, params string[] reasons)
    {
        Assert.True(info.State == JobState.Failed, $"{info.State}: {info.Message}");
        foreach (var reason in reasons) Assert.Contains(reason, info.Message);
        Assert.DoesNotContain("QZXJ", info.Message);
        Assert.DoesNotContain("PRIVATE KEY", info.Message);
        Assert.Equal("", info.Checkpoint);
    }

    /// <summary>Submits while no worker is registered (the job waits in the queue), runs <paramref name="swap"/>, then lets the job start.</summary>
    static async Task<JobInfo> SwapWhileQueued(InProcessCluster cluster, string train, Action swap)
    {
        var id = cluster.Client.Submit(Raw(Lm(train))).JobId;
        Assert.Equal(JobState.Queued, cluster.Client.Get(new GetJobRequest { JobId = id }).State);
        swap();
        await cluster.AddWorkerAsync();
        return await cluster.WaitAsync(id, TimeSpan.FromMinutes(2));
    }

    [Fact]
    public async Task A_file_swapped_for_a_symbolic_link_after_submit_fails_the_job_without_reading_the_target()
    {
        using var tmp = new TempDir();
        var (root, outside, train) = RootAndOutside(tmp, "ca.key");
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [root] });

        var info = await SwapWhileQueued(cluster, train, () =>
        {
            File.Delete(train);
            File.CreateSymbolicLink(train, Path.Combine(outside, "ca.key"));
        });
        FailedWithoutReading(info, train, "is a symbolic link; no symbolic link is followed");
    }

    [Fact]
    public async Task A_parent_directory_swapped_for_a_symbolic_link_after_submit_fails_the_job()
    {
        using var tmp = new TempDir();
        var root = Directory.CreateDirectory(Path.Combine(tmp.Path, "root")).FullName;
        var sub = Directory.CreateDirectory(Path.Combine(root, "corpus")).FullName;
        var outside = Directory.CreateDirectory(Path.Combine(tmp.Path, "outside")).FullName;
        var train = Path.Combine(sub, "train.txt");
        File.WriteAllText(train, TestJobs.Text());
        File.WriteAllText(Path.Combine(outside, "train.txt"), Secret);
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [root] });

        var info = await SwapWhileQueued(cluster, train, () =>
        {
            Directory.Move(sub, sub + ".old");
            Directory.CreateSymbolicLink(sub, outside);
        });
        FailedWithoutReading(info, $"{sub} on its path is a symbolic link");

        // The same swap higher up (the root's own parent stays as the operator configured it): a file at submit, a
        // symbolic link to a directory holding one now.
        Directory.Delete(sub);
        Directory.Move(sub + ".old", sub);
        info = await cluster.WaitAsync(cluster.Client.Submit(Raw(Lm(train))).JobId, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
    }

    [Fact]
    public async Task Hard_links_are_refused_at_submit_and_when_swapped_in_after_it()
    {
        using var pki = new TestPki();
        using var tmp = new TempDir();
        var (root, outside, train) = RootAndOutside(tmp, "other.txt");
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { DataRoots = [root] }, pki: pki);
        var caKey = Path.Combine(pki.CoordinatorDir, "ca.key");

        // A hard link to the coordinator's CA key, to its tokens file, and to any other file outside the root.
        Link(caKey, Path.Combine(root, "notes.txt"));
        Assert.Contains("is one of the coordinator's own files", Refused(cluster, Raw(Lm(Path.Combine(root, "notes.txt")))));
        Link(Path.Combine(cluster.DataDir, "tokens.json"), Path.Combine(root, "tokens.txt"));
        Assert.Contains("has 2 hard links", Refused(cluster, Raw(Lm(Path.Combine(root, "tokens.txt")))));
        Link(Path.Combine(outside, "other.txt"), Path.Combine(root, "other.txt"));
        var detail = Refused(cluster, Raw(Lm(Path.Combine(root, "other.txt"))));
        Assert.Contains("has 2 hard links; a data-root file is read only when it has exactly one", detail);
        Assert.DoesNotContain("QZXJ", detail);
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);

        // The checked file replaced by a hard link to the CA key while the job waits.
        var info = await SwapWhileQueued(cluster, train, () =>
        {
            File.Delete(train);
            Link(caKey, train);
        });
        FailedWithoutReading(info, "is one of the coordinator's own files");
    }

    [Fact]
    public async Task The_coordinators_own_secrets_under_a_data_root_are_never_read()
    {
        using var pki = new TestPki();
        // The operator made the whole PKI directory (the coordinator's TLS directory within it) a data root.
        File.WriteAllText(Path.Combine(pki.CoordinatorDir, "readme.txt"), TestJobs.Text());
        File.WriteAllText(Path.Combine(pki.Root, "train.txt"), TestJobs.Text());
        var joinTokens = Path.Combine(pki.Root, "join-tokens.txt");
        File.WriteAllText(joinTokens, "join-token-of-at-least-16-chars\n");
        await using var cluster = await InProcessCluster.StartAsync(1, new CoordinatorOptions { DataRoots = [pki.Root], JoinTokenFile = joinTokens, JoinTokens = ["configured-join-token-0123456789"] }, pki: pki);

        foreach (var file in new[] { "ca.key", "tls.key", "tls.crt", "ca.crt" })
            Assert.Contains("is one of the coordinator's own files", Refused(cluster, Raw(Lm(Path.Combine(pki.CoordinatorDir, file)))));
        Assert.Contains("is one of the coordinator's own files", Refused(cluster, Raw(Lm(joinTokens))));
        // `dtrain certs init DIR` leaves a copy of the CA key in DIR itself: as secret as the coordinator's.
        Assert.Contains("has the content of one of the coordinator's own secrets", Refused(cluster, Raw(Lm(Path.Combine(pki.Root, "ca.key")))));
        // Every other private key of `certs init DIR` too: the workers' bootstrap key (with it anyone joins as a worker and
        // is sent other tenants' data), a client's; or any PEM private key, wherever under the root (it was trained on).
        foreach (var key in new[] { Path.Combine(pki.WorkerDir, "tls.key"), Path.Combine(pki.ClientDir, "tls.key") })
            Assert.Contains("holds a private key", Refused(cluster, Raw(Lm(key))));
        var ssh = Path.Combine(pki.Root, "notes", "id_ed25519");
        Directory.CreateDirectory(Path.GetDirectoryName(ssh)!);
        File.WriteAllText(ssh, TestJobs.Text() + "\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n");
        var detail = Refused(cluster, Raw(Lm(ssh)));
        Assert.Contains("holds a private key", detail);
        Assert.DoesNotContain("b3Bl", detail);
        // A worker host's copy of a join token file, here with a comment line the coordinator's file does not have.
        var joinCopy = Path.Combine(pki.Root, "notes", "join.txt");
        File.WriteAllText(joinCopy, "# for the workers\njoin-token-of-at-least-16-chars\n");
        Assert.Contains("holds one of the coordinator's join tokens", Refused(cluster, Raw(Lm(joinCopy))));
        // And one the coordinator has from its configuration only (DTRAIN_Coordinator__JoinTokens__0), in a worker's settings.
        var workerSettings = Path.Combine(pki.Root, "notes", "worker.env");
        File.WriteAllText(workerSettings, "DTRAIN_Worker__JoinToken=configured-join-token-0123456789\n");
        Assert.Contains("holds one of the coordinator's join tokens", Refused(cluster, Raw(Lm(workerSettings))));
        // A user's token file or CLI configuration: the token acts as that user.
        var tokenFile = Path.Combine(pki.Root, "notes", "admin.tok");
        File.WriteAllText(tokenFile, "dtr_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ\n");
        var config = Path.Combine(pki.Root, "notes", "config.json");
        File.WriteAllText(config, "{\"token\": \"dtr_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ\"}\n");
        foreach (var file in new[] { tokenFile, config })
        {
            detail = Refused(cluster, Raw(Lm(file)));
            Assert.Contains("holds a coordinator token", detail);
            Assert.DoesNotContain("abcdefgh", detail);
        }
        // Anything else in its TLS directory too.
        Assert.Contains("is inside the coordinator's own data directory or TLS directory", Refused(cluster, Raw(Lm(Path.Combine(pki.CoordinatorDir, "readme.txt")))));
        Assert.Empty(cluster.Client.List(new ListJobsRequest()).Jobs);
        // A refused submission leaves no job directory behind (a loop of them filled DATA_DIR/jobs with empty ones).
        var jobsDir = Path.Combine(cluster.DataDir, "jobs");
        Assert.True(!Directory.Exists(jobsDir) || Directory.GetDirectories(jobsDir).Length == 0, string.Join(", ", Directory.Exists(jobsDir) ? Directory.GetDirectories(jobsDir) : []));

        // The rest of the root is data as before.
        var info = await cluster.WaitAsync(cluster.Client.Submit(Raw(Lm(Path.Combine(pki.Root, "train.txt")))).JobId, TimeSpan.FromMinutes(2));
        Assert.True(info.State == JobState.Succeeded, $"{info.State}: {info.Message}");
    }

    [Fact]
    public void A_jobs_own_data_is_read_when_the_data_directory_is_reached_through_a_symbolic_link()
    {
        using var tmp = new TempDir();
        var real = Directory.CreateDirectory(Path.Combine(tmp.Path, "real")).FullName;
        var link = Path.Combine(tmp.Path, "link");
        Directory.CreateSymbolicLink(link, real);
        var file = Path.Combine(link, "jobs", "job-0001", "data", "train-t.txt");
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        File.WriteAllText(file, "hello");
        // DataDir = /var/lib/dtrain -> /data/dtrain: uploads are read; a data-root file would not be through a link.
        var access = new DataAccess(new CoordinatorOptions { DataDir = link }, null!);
        Assert.Equal("hello", System.Text.Encoding.UTF8.GetString(DataFile.ReadAllBytes(file, 100, open: access.Open)));
        Assert.Contains("is not under a data root", Assert.Throws<DataFormatException>(() => access.Open(Path.Combine(real, "elsewhere.txt"))).Problem);
    }

    [Fact]
    public void OpenWithoutLinks_reads_the_file_it_checked_and_follows_no_link()
    {
        using var tmp = new TempDir();
        var dir = Directory.CreateDirectory(Path.Combine(tmp.Path, "d")).FullName;
        var file = Path.Combine(dir, "f.txt");
        File.WriteAllText(file, "first");
        using (var opened = DataFile.OpenWithoutLinks(DataFile.RealPath(file)!))
        {
            Assert.Equal(1u, opened.Links);
            Assert.Equal(DataFile.IdentityOf(file), opened.Id);
            Assert.Equal(DataFile.IdentityOf(dir), opened.Directories[^1]);
            // Renamed away and replaced after the open: the descriptor still reads the file that was checked.
            File.Move(file, file + ".old");
            File.WriteAllText(file, "second");
            var bytes = DataFile.ReadAllBytes(file, 100, open: _ => opened.Handle);
            Assert.Equal("first", System.Text.Encoding.UTF8.GetString(bytes));
        }
        File.CreateSymbolicLink(Path.Combine(tmp.Path, "l"), dir);
        var e = Assert.Throws<DataFormatException>(() => DataFile.OpenWithoutLinks(Path.Combine(DataFile.RealPath(tmp.Path)!, "l", "f.txt")));
        Assert.Contains("on its path is a symbolic link", e.Problem);
        Assert.Contains("file not found", Assert.Throws<DataFormatException>(() => DataFile.OpenWithoutLinks(Path.Combine(DataFile.RealPath(dir)!, "none"))).Problem);
        Assert.Contains("is a directory", Assert.Throws<DataFormatException>(() => DataFile.OpenWithoutLinks(DataFile.RealPath(dir)!)).Problem);
    }
}
