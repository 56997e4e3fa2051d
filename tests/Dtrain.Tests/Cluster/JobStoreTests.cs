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

    static LedgerStep Step(long step) => new()
    {
        Step = step, Epoch = 0, StepInEpoch = step, Rows = 8, Generation = 1,
        Shares = { new LedgerShare { WorkerId = "w-1", FirstRow = 0, Rows = 4 }, new LedgerShare { WorkerId = "w-2", FirstRow = 4, Rows = 4 } },
    };

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
            job.Transition(JobTrigger.Run, "", i => { i.TotalSteps = 100; i.WorkerIds.Add("w-1"); i.WorkerIds.Add("w-2"); });
            for (var s = 0; s < 6; s++) store.Committed(job.Id, Step(s));
            store.RolledBack(job.Id, 4);
            store.Committed(job.Id, Step(4));
            job.Update(i => { i.Step = 5; i.Loss = 1.25; i.Checkpoint = "/x/step-5.dtck"; }, publishState: false);
            job.Update(i => { i.Step = 6; i.Loss = 1.125; }, publishState: false);
        }
        using var reopened = new JobStore(db, NullLogger.Instance);
        var stored = Assert.Single(reopened.LoadAll());
        Assert.Equal("job-0007", stored.Info.JobId);
        Assert.Equal("bob", stored.Info.Owner);
        Assert.Equal(JobState.Running, stored.Info.State);
        Assert.Equal(1, stored.Info.Generation);
        Assert.Equal(6, stored.Info.Step);
        Assert.Equal(1.125, stored.Info.Loss);
        Assert.Equal("/x/step-5.dtck", stored.Info.Checkpoint);
        Assert.Equal(["w-1", "w-2"], stored.Info.WorkerIds);
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
        job.Update(i => { i.Step = 1; }, publishState: false);
        job.Transition(JobTrigger.Start, "preparing data");
        job.Transition(JobTrigger.Run, "");
        job.Transition(JobTrigger.Succeed, "");
        // No flush, no close: what a kill -9 right now would leave.
        using (var crashed = new JobStore(CrashCopy(db, Path.Combine(tmp.Path, "crash1")), NullLogger.Instance))
        {
            var info = Assert.Single(crashed.LoadAll());
            Assert.Equal(JobState.Succeeded, info.Info.State);
            // Steps queued before the state change are written with it.
            Assert.Equal([0L], info.Ledger.Select(s => s.Step));
        }
        job.Update(i => i.Loss = 0.5, publishState: false);
        store.Flush();
        using var flushed = new JobStore(CrashCopy(db, Path.Combine(tmp.Path, "crash2")), NullLogger.Instance);
        Assert.Equal(0.5, Assert.Single(flushed.LoadAll()).Info.Loss);
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
        Assert.Equal(["job-0001"], jobs.Select(j => j.Info.JobId));
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
            // Flip one bit of job-0002's record and of job-0001's ledger step 1 (their hashes stay).
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
            Flip("jobs", "info", "id = 'job-0002'");
            Flip("ledger", "entry", "job_id = 'job-0001' AND step = 1");
        }
        var logged = new ListLogger();
        using var reopened = new JobStore(db, logged);
        var jobs = reopened.LoadAll();
        Assert.Equal(["job-0001", "job-0003"], jobs.Select(j => j.Info.JobId));
        Assert.Equal([0L], jobs[0].Ledger.Select(s => s.Step));
        Assert.Contains(logged.Lines, l => l.Contains("job job-0002 is damaged", StringComparison.Ordinal));
        Assert.Contains(logged.Lines, l => l.Contains("ledger step 1 of job job-0001 is damaged", StringComparison.Ordinal));
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
