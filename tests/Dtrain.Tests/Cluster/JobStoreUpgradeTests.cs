using System.Security.Cryptography;
using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Google.Protobuf;
using Microsoft.Data.Sqlite;

namespace Dtrain.Tests.Cluster;

/// <summary>
/// A coordinator started on a data directory whose jobs.db an earlier dtrain wrote (schema version 0: each job's proto
/// JobInfo bytes in column info) migrates it and carries on: the finished job is listed with the same record and
/// stays downloadable, the queued job stays queued and runs once workers come.
/// </summary>
public class JobStoreUpgradeTests
{
    /// <summary>Rewrites the job rows of <paramref name="db"/> as the first format did: <paramref name="jobs"/> as proto bytes with their SHA-256, user_version 0.</summary>
    static void AsFirstFormat(string db, IReadOnlyList<JobInfo> jobs)
    {
        using var c = new SqliteConnection($"Data Source={db};Pooling=False");
        c.Open();
        var kept = new Dictionary<string, (string Resume, long Order)>();
        using (var read = c.CreateCommand())
        {
            read.CommandText = "SELECT id, resume_path, queue_order FROM jobs";
            using var r = read.ExecuteReader();
            while (r.Read()) kept[r.GetString(0)] = (r.GetString(1), r.GetInt64(2));
        }
        using var tx = c.BeginTransaction();
        void Sql(string text, params (string, object)[] args)
        {
            using var cmd = c.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = text;
            foreach (var (n, v) in args) cmd.Parameters.AddWithValue(n, v);
            cmd.ExecuteNonQuery();
        }
        Sql("DROP TABLE jobs");
        Sql("CREATE TABLE jobs (id TEXT PRIMARY KEY, info BLOB NOT NULL, hash BLOB NOT NULL, resume_path TEXT NOT NULL, queue_order INTEGER NOT NULL)");
        foreach (var info in jobs)
        {
            // As a coordinator of that format stored it: the checkpoint by its path (clients are shown its name).
            var stored = info.Clone();
            if (stored.Checkpoint != "") stored.Checkpoint = InProcessCluster.CheckpointFile(Path.GetDirectoryName(db)!, info);
            var bytes = stored.ToByteArray();
            Sql("INSERT INTO jobs (id, info, hash, resume_path, queue_order) VALUES ($id, $info, $hash, $resume, $order)",
                ("$id", info.JobId), ("$info", bytes), ("$hash", SHA256.HashData(bytes)), ("$resume", kept[info.JobId].Resume), ("$order", kept[info.JobId].Order));
        }
        Sql("PRAGMA user_version = 0");
        tx.Commit();
    }

    static long Version(string db)
    {
        using var c = new SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "PRAGMA user_version";
        return (long)cmd.ExecuteScalar()!;
    }

    [Fact]
    public async Task A_coordinator_on_a_jobs_db_of_the_proto_format_migrates_it_and_keeps_its_finished_and_queued_jobs()
    {
        await using var cluster = await InProcessCluster.StartAsync(1);
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(100));
        var spec = TestJobs.CharLm("t.txt", steps: 8);
        spec = spec with { Training = spec.Training with { BatchSize = 4, EvalInterval = 4, CheckpointInterval = 4 } };
        var path = new FileInfo(tmp.Write("job.json", JobSpecSerializer.Serialize(spec)));
        var done = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, path, 1)).JobId;
        var finished = await cluster.WaitAsync(done, TimeSpan.FromMinutes(2));
        Assert.True(finished.State == JobState.Succeeded, $"{finished.State}: {finished.Message}");
        // Two workers asked, one registered: it waits in the queue.
        var waiting = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, path, 2)).JobId;
        var before = cluster.Client.List(new ListJobsRequest()).Jobs.ToList();
        Assert.Equal(JobState.Queued, before[1].State);
        var db = Path.Combine(cluster.DataDir, "jobs.db");
        Assert.Equal(JobStore.SchemaVersion, Version(db));

        await cluster.RestartCoordinatorAsync(whileStopped: () => AsFirstFormat(db, before));

        Assert.Equal(JobStore.SchemaVersion, Version(db));
        var after = cluster.Client.List(new ListJobsRequest()).Jobs;
        Assert.Equal([done, waiting], after.Select(j => j.JobId));
        // The finished job: the same record, its checkpoint downloadable, its metrics history kept.
        Assert.Equal(before[0], after[0]);
        var model = Path.Combine(tmp.Path, "model.dtck");
        Assert.Equal(0, JobCommands.DownloadTo(cluster.Client, done, model));
        Assert.Equal(File.ReadAllBytes(cluster.CheckpointFile(finished)), File.ReadAllBytes(model));
        Assert.Equal(8, cluster.Client.History(new GetJobRequest { JobId = done }).Events.Count(e => e.KindCase == JobEvent.KindOneofCase.Step));
        // The queued job: still queued, and it runs once a second worker registers.
        Assert.Equal(JobState.Queued, after[1].State);
        Assert.Equal((before[1].Owner, before[1].SubmittedUnixMs, before[1].WorkersRequested), (after[1].Owner, after[1].SubmittedUnixMs, after[1].WorkersRequested));
        await cluster.AddWorkerAsync();
        var ran = await cluster.WaitAsync(waiting, TimeSpan.FromMinutes(2));
        Assert.True(ran.State == JobState.Succeeded, $"{ran.State}: {ran.Message}");
        Assert.Equal(8, ran.Step);
        // Ids continue after the migrated jobs.
        Assert.Equal("job-0003", cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, path, 1)).JobId);
    }
}
