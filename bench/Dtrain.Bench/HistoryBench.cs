using System.Diagnostics;
using System.Globalization;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Specs;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Bench;

/// <summary>
/// `dtrain-bench history`: what keeping every step event in the job store costs the training loop. Publishing N step
/// events on a job (the driver's call after each step) without a store, with the store (events queued, written by the
/// one-second flush), and — the design it replaced on paper — one SQLite transaction (synchronous=FULL, WAL) per
/// event. Side by side, same process, alternating order over rounds; microseconds per step and ratios.
/// </summary>
public static class HistoryBench
{
    const int Steps = 2000;

    public static int Run()
    {
        var root = Directory.CreateTempSubdirectory("dtrain-history-bench-").FullName;
        try
        {
            Console.WriteLine($"history: {Steps} step events published per run, 3 rounds (µs per step: the training loop's cost)");
            for (var round = 1; round <= 3; round++)
            {
                double none, batched, each;
                if (round % 2 == 1)
                {
                    none = Publish(root, store: false);
                    batched = Publish(root, store: true);
                    each = PerEventTransaction(root);
                }
                else
                {
                    each = PerEventTransaction(root);
                    batched = Publish(root, store: true);
                    none = Publish(root, store: false);
                }
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"round {round}: no store {none:F2} µs/step | store, batched {batched:F2} µs/step ({batched / none:F2}x) | one transaction per step {each:F1} µs/step ({each / batched:F0}x the batched)"));
            }
            return 0;
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    static StepReport Report(long step) => new() { Step = step, TotalSteps = Steps, Loss = 2.0 / step, Lr = 1e-3, SamplesPerSecond = 100, StepMs = 80, ComputeMs = 60, AllreduceMs = 15, GradNorm = 0.5, Workers = 3 };

    /// <summary>The step as the store keeps it (proto bytes in the events table).</summary>
    static JobEvent Step(long step) => ProtoMapper.EventOf(new JobNotice.Step(Report(step)));

    /// <summary>µs per JobRecord.PublishStep; with the store, the final flush is timed too (every event on disk).</summary>
    static double Publish(string root, bool store)
    {
        var dir = Directory.CreateDirectory(Path.Combine(root, "run-" + Guid.NewGuid().ToString("N"))).FullName;
        var job = new JobRecord("job-0001", new JobSpec { Name = "bench" }, dir, 1, DateTimeOffset.UtcNow);
        using var jobs = store ? new JobStore(Path.Combine(dir, "jobs.db"), NullLogger.Instance) : null;
        if (jobs is not null)
        {
            job.Persist(jobs);
            jobs.SaveNow(job);
        }
        var clock = Stopwatch.StartNew();
        for (var s = 1; s <= Steps; s++) job.PublishStep(Report(s));
        jobs?.Flush();
        var elapsed = clock.Elapsed.TotalMilliseconds * 1000 / Steps;
        if (jobs is not null && job.History().Count != Steps) throw new InvalidOperationException("events were lost");
        return elapsed;
    }

    /// <summary>µs per step for a commit of each event on its own (the same table and settings as the store).</summary>
    static double PerEventTransaction(string root)
    {
        var dir = Directory.CreateDirectory(Path.Combine(root, "each-" + Guid.NewGuid().ToString("N"))).FullName;
        using var db = new SqliteConnection($"Data Source={Path.Combine(dir, "jobs.db")};Pooling=False");
        db.Open();
        using (var setup = db.CreateCommand())
        {
            setup.CommandText = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, step INTEGER NOT NULL, event BLOB NOT NULL, PRIMARY KEY (job_id, seq));";
            setup.ExecuteNonQuery();
        }
        var clock = Stopwatch.StartNew();
        for (var s = 1; s <= Steps; s++)
        {
            using var tx = db.BeginTransaction();
            using var cmd = db.CreateCommand();
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO events (job_id, seq, step, event) VALUES ($id, $seq, $step, $event)";
            cmd.Parameters.AddWithValue("$id", "job-0001");
            cmd.Parameters.AddWithValue("$seq", s);
            cmd.Parameters.AddWithValue("$step", s);
            cmd.Parameters.AddWithValue("$event", Google.Protobuf.MessageExtensions.ToByteArray(Step(s)));
            cmd.ExecuteNonQuery();
            tx.Commit();
        }
        return clock.Elapsed.TotalMilliseconds * 1000 / Steps;
    }
}
