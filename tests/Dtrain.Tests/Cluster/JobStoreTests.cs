using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Tests.Support;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>The coordinator's durable job store (SQLite): round trip, state changes durable at once, torn and damaged writes.</summary>
public class JobStoreTests
{
    static JobRecord NewJob(TempDir tmp, string id, string owner = "alice")
    {
        var dir = Path.Combine(tmp.Path, "jobs", id);
        var spec = TestJobs.CharLm("t.txt") with { Output = dir };
        return new JobRecord(id, spec, dir, 2, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000), owner);
    }

    static LedgerEntry Step(long step) => new(step, 0, step, 8, 1, [new RowShare("w-1", 0, 4), new RowShare("w-2", 4, 4)]);

    /// <summary>A copy of the database and its write-ahead log as they are on disk now, as a kill -9 would leave them (the store stays open).</summary>
    static string CrashCopy(string db, string to)
    {
        Directory.CreateDirectory(to);
        var copy = Path.Combine(to, "jobs.db");
        File.Copy(db, copy);
        if (File.Exists(db + "-wal")) File.Copy(db + "-wal", copy + "-wal");
        return copy;
    }

    [Fact]
    public void Round_trip_keeps_info_owner_generation_progress_queue_order_checkpoint_and_ledger_with_roll_backs()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        using (var store = new JobStore(db, NullLogger.Instance))
        {
            var job = NewJob(tmp, "job-0007", owner: "bob");
            job.QueueOrder = 42;
            job.Persist(store);
            Assert.True(store.SaveNow(job));
            job.NextGeneration();
            job.Transition(JobTrigger.Start, "preparing data");
            job.Transition(JobTrigger.Run, "", p => p with { TotalSteps = 100, WorkerIds = ["w-1", "w-2"] });
            for (var s = 0; s < 6; s++) store.Committed(job.Id, Step(s));
            store.RolledBack(job.Id, 4);
            store.Committed(job.Id, Step(4));
            job.Update(p => p with { Step = 5, Loss = 1.25, Checkpoint = "/x/step-5.dtck" }, publishState: false);
            job.Update(p => p with { Step = 6, Loss = 1.125 }, publishState: false);
        }
        using var reopened = new JobStore(db, NullLogger.Instance);
        var stored = Assert.Single(reopened.LoadAll());
        Assert.Equal("job-0007", stored.Job.Id);
        Assert.Equal("bob", stored.Job.Owner);
        Assert.Equal(JobStatus.Running, stored.Job.Status);
        Assert.Equal(1, stored.Job.Progress.Generation);
        Assert.Equal(6, stored.Job.Progress.Step);
        Assert.Equal(1.125, stored.Job.Progress.Loss);
        Assert.Equal("/x/step-5.dtck", stored.Job.Progress.Checkpoint);
        Assert.Equal(["w-1", "w-2"], stored.Job.Progress.WorkerIds);
        Assert.Equal(42, stored.QueueOrder);
        Assert.Equal([0L, 1, 2, 3, 4], stored.Ledger.Select(s => s.Step));
        Assert.Equal(Step(2), stored.Ledger[2]);
    }

    [Fact]
    public void A_state_change_is_on_disk_when_Update_returns_and_progress_by_the_next_flush()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        using var store = new JobStore(db, NullLogger.Instance);
        var job = NewJob(tmp, "job-0001");
        job.Persist(store);
        store.SaveNow(job);
        store.Committed(job.Id, Step(0));
        job.Update(p => p with { Step = 1 }, publishState: false);
        job.Transition(JobTrigger.Start, "preparing data");
        job.Transition(JobTrigger.Run, "");
        job.Transition(JobTrigger.Succeed, "");
        // No flush, no close: what a kill -9 right now would leave.
        using (var crashed = new JobStore(CrashCopy(db, Path.Combine(tmp.Path, "crash1")), NullLogger.Instance))
        {
            var info = Assert.Single(crashed.LoadAll());
            Assert.Equal(JobStatus.Succeeded, info.Job.Status);
            // Steps queued before the state change are written with it.
            Assert.Equal([0L], info.Ledger.Select(s => s.Step));
        }
        job.Update(p => p with { Loss = 0.5 }, publishState: false);
        store.Flush();
        using var flushed = new JobStore(CrashCopy(db, Path.Combine(tmp.Path, "crash2")), NullLogger.Instance);
        Assert.Equal(0.5, Assert.Single(flushed.LoadAll()).Job.Progress.Loss);
    }

    [Fact]
    public void A_torn_last_write_is_ignored_and_the_jobs_before_it_load()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        using var store = new JobStore(db, NullLogger.Instance);
        var a = NewJob(tmp, "job-0001");
        a.Persist(store);
        store.SaveNow(a);
        var walBefore = new FileInfo(db + "-wal").Length;
        var b = NewJob(tmp, "job-0002");
        b.Persist(store);
        store.SaveNow(b);
        var copy = CrashCopy(db, Path.Combine(tmp.Path, "crash"));
        var walAfter = new FileInfo(copy + "-wal").Length;
        Assert.True(walAfter > walBefore, $"the second save should be in the write-ahead log ({walBefore} -> {walAfter} bytes)");
        // The power went out in the middle of the second transaction's last frame.
        using (var wal = new FileStream(copy + "-wal", FileMode.Open)) wal.SetLength(walAfter - 100);
        using var crashed = new JobStore(copy, NullLogger.Instance);
        var jobs = crashed.LoadAll();
        Assert.Equal(["job-0001"], jobs.Select(j => j.Job.Id));
    }

    [Fact]
    public void A_damaged_record_is_skipped_naming_the_job_and_the_others_load()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        using (var store = new JobStore(db, NullLogger.Instance))
        {
            foreach (var id in new[] { "job-0001", "job-0002", "job-0003" })
            {
                var job = NewJob(tmp, id);
                job.Persist(store);
                store.SaveNow(job);
            }
            store.Committed("job-0001", Step(0));
            store.Committed("job-0001", Step(1));
        }
        using (var raw = new SqliteConnection($"Data Source={db};Pooling=False"))
        {
            raw.Open();
            // Change one character of job-0002's record and flip one bit of job-0001's ledger step 1 (their hashes stay).
            using (var edit = raw.CreateCommand())
            {
                edit.CommandText = "UPDATE jobs SET record = replace(record, '\"step\":0', '\"step\":1') WHERE id = 'job-0002'";
                Assert.Equal(1, edit.ExecuteNonQuery());
            }
            void Flip(string table, string column, string where)
            {
                using var read = raw.CreateCommand();
                read.CommandText = $"SELECT {column} FROM {table} WHERE {where}";
                var bytes = (byte[])read.ExecuteScalar()!;
                bytes[3] ^= 1;
                using var write = raw.CreateCommand();
                write.CommandText = $"UPDATE {table} SET {column} = $b WHERE {where}";
                write.Parameters.AddWithValue("$b", bytes);
                Assert.Equal(1, write.ExecuteNonQuery());
            }
            Flip("ledger", "entry", "job_id = 'job-0001' AND step = 1");
        }
        var logged = new ListLogger();
        using var reopened = new JobStore(db, logged);
        var jobs = reopened.LoadAll();
        Assert.Equal(["job-0001", "job-0003"], jobs.Select(j => j.Job.Id));
        Assert.Equal([0L], jobs[0].Ledger.Select(s => s.Step));
        Assert.Contains(logged.Lines, l => l.Contains("job job-0002 is damaged", StringComparison.Ordinal));
        Assert.Contains(logged.Lines, l => l.Contains("ledger step 1 of job job-0001 is damaged", StringComparison.Ordinal));
    }

    /// <summary>A progress with every field set to something other than its default.</summary>
    static JobProgress Everything() => new()
    {
        Message = "generation 3: without w-2",
        WorkerIds = ["w-1", "w-3"],
        Step = 57,
        TotalSteps = 200,
        Epoch = 2,
        Loss = double.NaN,
        SamplesPerSecond = 123.5,
        LastEval = new Dtrain.Training.EvalMetrics(1.75, 640) { Accuracy = 0.5, MacroF1 = 0.25, Perplexity = Math.Exp(1.75), BitsPerToken = 1.75 / Math.Log(2) },
        Started = DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_001_234),
        Finished = DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_099_999),
        Checkpoint = "/data/jobs/job-0009/checkpoints/ckpt-000050.dtck",
        CheckpointSeconds = 0.375,
        CheckpointBytes = 1_234_567,
        Parameters = 98_765,
        ResumedFrom = "job-0002",
        StartStep = 20,
        MinWorkers = 2,
        MaxWorkers = 4,
        Generation = 3,
        Restarts = 1,
    };

    [Fact]
    public void Round_trip_of_the_domain_record_keeps_every_field_of_the_progress_and_the_identity()
    {
        var everything = Everything();
        // Every field is set, so a field added to JobProgress and not kept by the store fails this test.
        foreach (var property in typeof(JobProgress).GetProperties().Where(p => p.CanWrite))
        {
            var value = property.GetValue(everything);
            var fresh = property.GetValue(new JobProgress());
            Assert.False(Equals(value, fresh) || value is IReadOnlyList<string> { Count: 0 }, $"the test's progress leaves {property.Name} at its default");
        }
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        var job = NewJob(tmp, "job-0009", owner: "carol");
        var before = default(JobInfo);
        using (var store = new JobStore(db, NullLogger.Instance))
        {
            job.Persist(store);
            job.Transition(JobTrigger.Start, "preparing data");
            // The change alongside a transition replaces the whole progress here, message included.
            job.Transition(JobTrigger.Fail, "worker w-2 lost", _ => everything);
            before = job.ToProto();
        }
        using var reopened = new JobStore(db, NullLogger.Instance);
        var stored = Assert.Single(reopened.LoadAll());
        Assert.Equal(new JobDocument("job-0009", job.Spec.Name, job.Spec.Task, "carol", 2, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000), JobStatus.Failed,
            everything), stored.Job);
        Assert.True(double.IsNaN(stored.Job.Progress.Loss));
        // Restored, the job shows exactly what it showed before (the proto at the service edge).
        var restored = JobRecord.Restore(stored, job.Spec, job.Dir, Dtrain.Data.DataReadLimits.Local);
        Assert.Equal(before, restored.ToProto());
        Assert.Equal(JobStatus.Failed, restored.Status);
    }

    /// <summary>A jobs.db as the first format wrote it: the same tables, with each job's proto JobInfo bytes and their SHA-256 in column info.</summary>
    static void WriteFirstFormat(string db, IEnumerable<(JobInfo Info, string Resume, long Order, bool Damaged)> jobs, IEnumerable<LedgerEntry> ledger)
    {
        using var c = new SqliteConnection($"Data Source={db};Pooling=False");
        c.Open();
        void Sql(string text, params (string, object)[] args)
        {
            using var cmd = c.CreateCommand();
            cmd.CommandText = text;
            foreach (var (n, v) in args) cmd.Parameters.AddWithValue(n, v);
            cmd.ExecuteNonQuery();
        }
        Sql("PRAGMA journal_mode=WAL;");
        Sql("""
            CREATE TABLE jobs (id TEXT PRIMARY KEY, info BLOB NOT NULL, hash BLOB NOT NULL, resume_path TEXT NOT NULL, queue_order INTEGER NOT NULL);
            CREATE TABLE ledger (job_id TEXT NOT NULL, step INTEGER NOT NULL, entry BLOB NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (job_id, step));
            CREATE TABLE events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, step INTEGER NOT NULL, event BLOB NOT NULL, PRIMARY KEY (job_id, seq));
            CREATE TABLE uploads (id TEXT PRIMARY KEY, owner TEXT NOT NULL, bytes INTEGER NOT NULL, completed_unix_ms INTEGER NOT NULL, name TEXT NOT NULL);
            """);
        foreach (var (info, resume, order, damaged) in jobs)
        {
            var bytes = Google.Protobuf.MessageExtensions.ToByteArray(info);
            var hash = System.Security.Cryptography.SHA256.HashData(bytes);
            if (damaged) bytes[3] ^= 1;
            Sql("INSERT INTO jobs (id, info, hash, resume_path, queue_order) VALUES ($id, $info, $hash, $resume, $order)",
                ("$id", info.JobId), ("$info", bytes), ("$hash", hash), ("$resume", resume), ("$order", order));
        }
        foreach (var step in ledger)
        {
            var bytes = Google.Protobuf.MessageExtensions.ToByteArray(step.ToProto());
            Sql("INSERT INTO ledger (job_id, step, entry, hash) VALUES ('job-0004', $step, $entry, $hash)",
                ("$step", step.Step), ("$entry", bytes), ("$hash", System.Security.Cryptography.SHA256.HashData(bytes)));
        }
        Sql("INSERT INTO events (job_id, seq, step, event) VALUES ('job-0004', 1, 3, $e)",
            ("$e", Google.Protobuf.MessageExtensions.ToByteArray(new JobEvent { Step = new StepEvent { Step = 3, Loss = 2.5 } })));
        Sql("INSERT INTO uploads (id, owner, bytes, completed_unix_ms, name) VALUES ('up-1', 'dave', 10, 1700000000000, 'train.txt')");
    }

    [Fact]
    public void A_store_of_the_first_format_with_proto_records_is_migrated_on_open_and_its_jobs_load_as_before()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        var spec = TestJobs.CharLm("t.txt");
        var running = new JobInfo
        {
            JobId = "job-0004", Name = spec.Name, Task = spec.Task, State = JobState.Running, Message = "", WorkersRequested = 3,
            WorkerIds = { "w-1", "w-2" }, Step = 3, TotalSteps = 20, Epoch = 1, Loss = 2.5, SamplesPerSecond = 40,
            LastEval = new Metrics { Loss = 2.75, Count = 64, Perplexity = Math.Exp(2.75), BitsPerToken = 2.75 / Math.Log(2) },
            SubmittedUnixMs = 1_700_000_000_000, StartedUnixMs = 1_700_000_000_500, Checkpoint = "/data/jobs/job-0004/checkpoints/ckpt-000002.dtck",
            Parameters = 4321, ResumedFrom = "job-0001", StartStep = 1, MinWorkers = 1, MaxWorkers = 3, Generation = 2, Restarts = 1,
            Owner = "erin", CheckpointSeconds = 0.25, CheckpointBytes = 9999,
        };
        var queued = new JobInfo { JobId = "job-0005", Name = spec.Name, Task = spec.Task, State = JobState.Queued, Message = "waiting for 2 idle workers", WorkersRequested = 2, SubmittedUnixMs = 1_700_000_001_000, Owner = "erin" };
        var damaged = new JobInfo { JobId = "job-0006", Name = spec.Name, Task = spec.Task, State = JobState.Succeeded, SubmittedUnixMs = 1_700_000_002_000 };
        WriteFirstFormat(db, [(running, "/data/jobs/job-0001/checkpoints/ckpt-000001.dtck", 7, false), (queued, "", 8, false), (damaged, "", 9, true)], [Step(0), Step(1), Step(2)]);

        var logged = new ListLogger();
        using (var store = new JobStore(db, logged))
        {
            var jobs = store.LoadAll();
            Assert.Equal(["job-0004", "job-0005"], jobs.Select(j => j.Job.Id));
            Assert.Contains(logged.Lines, l => l.Contains("job job-0006 is damaged", StringComparison.Ordinal));
            Assert.Contains(logged.Lines, l => l.Contains("migrated from schema version 0", StringComparison.Ordinal));
            var (a, b) = (jobs[0], jobs[1]);
            Assert.Equal(("/data/jobs/job-0001/checkpoints/ckpt-000001.dtck", 7L), (a.ResumePath, a.QueueOrder));
            Assert.Equal([0L, 1, 2], a.Ledger.Select(s => s.Step));
            Assert.Equal(JobStatus.Running, a.Job.Status);
            Assert.Equal(("erin", 3, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_000)), (a.Job.Owner, a.Job.WorkersRequested, a.Job.Submitted));
            Assert.Null(a.Job.Progress.Finished);
            Assert.Equal((JobStatus.Queued, "waiting for 2 idle workers", 8L), (b.Job.Status, b.Job.Progress.Message, b.QueueOrder));
            // Every field comes through: the restored job shows the proto it was stored as.
            var restored = JobRecord.Restore(a, spec, Path.Combine(tmp.Path, "jobs", "job-0004"), Dtrain.Data.DataReadLimits.Local);
            // Clients see a checkpoint by its file name, never the coordinator's path to it.
            var shown = running.Clone();
            shown.Checkpoint = "ckpt-000002.dtck";
            Assert.Equal(shown, restored.ToProto());
            Assert.Equal(queued, JobRecord.Restore(b, spec, Path.Combine(tmp.Path, "jobs", "job-0005"), Dtrain.Data.DataReadLimits.Local).ToProto());
            // The other tables are untouched.
            Assert.Equal(3, Assert.IsType<JobNotice.Step>(Assert.Single(store.Events("job-0004", out _))).Report.Step);
            Assert.Equal("dave", Assert.Single(store.LoadUploads()).Owner);
            // And the migrated store is written in the new format from now on.
            restored.Persist(store);
            restored.Update(p => p with { Step = 4 }, publishState: false);
            store.Flush();
        }
        using (var raw = new SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False"))
        {
            raw.Open();
            using var cmd = raw.CreateCommand();
            cmd.CommandText = "PRAGMA user_version";
            Assert.Equal((long)JobStore.SchemaVersion, (long)cmd.ExecuteScalar()!);
            cmd.CommandText = "SELECT group_concat(name) FROM pragma_table_info('jobs')";
            Assert.Equal("id,record,hash,resume_path,queue_order", (string)cmd.ExecuteScalar()!);
            cmd.CommandText = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'jobs_v0'";
            Assert.Equal(0L, (long)cmd.ExecuteScalar()!);
        }
        // Opened again: nothing left to migrate; the progress written after the migration is there.
        var again = new ListLogger();
        using var reopened = new JobStore(db, again);
        Assert.Equal([4L, 0L], reopened.LoadAll().Select(j => j.Job.Progress.Step));
        Assert.DoesNotContain(again.Lines, l => l.Contains("migrated", StringComparison.Ordinal));
    }

    [Fact]
    public void A_store_of_a_newer_schema_is_refused_naming_its_version()
    {
        using var tmp = new TempDir();
        var db = Path.Combine(tmp.Path, "jobs.db");
        using (var c = new SqliteConnection($"Data Source={db};Pooling=False"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = $"PRAGMA user_version = {JobStore.SchemaVersion + 1}";
            cmd.ExecuteNonQuery();
        }
        var e = Assert.Throws<InvalidDataException>(() => new JobStore(db, NullLogger.Instance));
        Assert.Contains(db, e.Message, StringComparison.Ordinal);
        Assert.Contains($"schema version {JobStore.SchemaVersion + 1}", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_file_that_is_not_a_database_is_refused_naming_it()
    {
        using var tmp = new TempDir();
        var db = tmp.Write("jobs.db", new string('x', 4096));
        var e = Assert.Throws<InvalidDataException>(() => new JobStore(db, NullLogger.Instance));
        Assert.Contains(db, e.Message, StringComparison.Ordinal);
        Assert.Contains("job store", e.Message, StringComparison.Ordinal);
    }

    sealed class ListLogger : Microsoft.Extensions.Logging.ILogger
    {
        public List<string> Lines { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;
        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (Lines) Lines.Add(formatter(state, exception));
        }
    }
}
