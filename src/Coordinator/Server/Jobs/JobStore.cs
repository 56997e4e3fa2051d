using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Dtrain.Protos.Jobs;
using Google.Protobuf;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;

namespace Dtrain.Server;

/// <summary>A pending upload as the store kept it: its handle, its owner (whose quota it counts against), its size, when it completed (its TTL runs from then) and its file name.</summary>
public sealed record StoredUpload(string Id, string Owner, long Bytes, DateTimeOffset Completed, string Name);

/// <summary>A job as the store kept it: its record (identity, state, progress, generation, newest checkpoint), the checkpoint it resumes from, its place in the queue and its ledger.</summary>
public sealed record StoredJob(JobDocument Job, string ResumePath, long QueueOrder, IReadOnlyList<LedgerEntry> Ledger);

/// <summary>The job store's JSON of a job's record (source-generated; non-finite numbers allowed: a loss may be NaN).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, UseStringEnumConverter = true,
    NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(JobDocument))]
internal sealed partial class JobStoreJson : JsonSerializerContext;

/// <summary>
/// The coordinator's durable job records: an SQLite database (DATA_DIR/jobs.db, write-ahead log, synchronous=FULL)
/// with one row per job — its <see cref="JobDocument"/> as JSON with a SHA-256 — and one row per committed
/// ledger step. A state change (<see cref="SaveNow"/>) is on disk before the call returns, with every step
/// recorded before it; progress (<see cref="SaveSoon"/>) and ledger steps are queued and written together by a
/// background flush at most every <see cref="FlushInterval"/>, so a training step never waits for the disk. A row whose
/// bytes do not match its hash (a torn or damaged write) is skipped with an error naming the job; SQLite itself
/// discards a transaction the log holds only in part. The schema's version is the database's <c>user_version</c>
/// (<see cref="SchemaVersion"/>); a store of the first format (version 0: each job's proto <c>JobInfo</c> bytes, column
/// <c>info</c>) is migrated when opened, in one transaction.
/// </summary>
public sealed class JobStore : IDisposable
{
    /// <summary>How often queued progress and ledger steps are written.</summary>
    public static readonly TimeSpan FlushInterval = TimeSpan.FromSeconds(1);

    /// <summary>
    /// The format this code writes: 2 = each job's record as JSON (column <c>record</c>). 0 (SQLite's default) is the
    /// first format, proto bytes in column <c>info</c>, or a new file; 1 was never written.
    /// </summary>
    public const int SchemaVersion = 2;

    private readonly SqliteConnection db;
    private readonly Lock writeGate = new();
    private readonly Lock pendingGate = new();
    private readonly Dictionary<string, JobRecord> dirty = [];
    private readonly List<Action<SqliteTransaction>> ledgerOps = [];
    private readonly ILogger log;
    private readonly Timer flusher;
    private bool disposed;

    public string Path { get; }

    public JobStore(string path, ILogger log)
    {
        Path = System.IO.Path.GetFullPath(path);
        this.log = log;
        PrivateFiles.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        // Created owner-only before SQLite opens it: its -wal and -shm files take the database file's mode. Should that
        // fail (a read-only directory), SQLite's own open below says what is wrong.
        try
        {
            if (!File.Exists(Path)) PrivateFiles.Create(Path, FileMode.CreateNew).Dispose();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        try
        {
            db = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path, Mode = SqliteOpenMode.ReadWriteCreate, Pooling = false }.ToString());
            db.Open();
            Execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;");
            var version = Convert.ToInt32(Scalar("PRAGMA user_version"), System.Globalization.CultureInfo.InvariantCulture);
            if (version > SchemaVersion)
                throw new InvalidDataException($"{Path}: the job store has schema version {version}, written by a newer dtrain (this one reads up to {SchemaVersion}); run that version, or move the file aside to start with no jobs");
            if (version < SchemaVersion)
            {
                var first = Columns("jobs").Contains("info");
                using var tx = db.BeginTransaction();
                if (first) Run(tx, "ALTER TABLE jobs RENAME TO jobs_v0");
                Run(tx, """
                    CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, record TEXT NOT NULL, hash BLOB NOT NULL, resume_path TEXT NOT NULL, queue_order INTEGER NOT NULL);
                    CREATE TABLE IF NOT EXISTS ledger (job_id TEXT NOT NULL, step INTEGER NOT NULL, entry BLOB NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (job_id, step));
                    CREATE TABLE IF NOT EXISTS events (job_id TEXT NOT NULL, seq INTEGER NOT NULL, step INTEGER NOT NULL, event BLOB NOT NULL, PRIMARY KEY (job_id, seq));
                    CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY, owner TEXT NOT NULL, bytes INTEGER NOT NULL, completed_unix_ms INTEGER NOT NULL, name TEXT NOT NULL);
                    """);
                if (first) MigrateFirstFormat(tx);
                Run(tx, $"PRAGMA user_version = {SchemaVersion}");
                tx.Commit();
            }
        }
        catch (SqliteException e)
        {
            db?.Dispose();
            throw new InvalidDataException($"{Path}: {OpenProblem(e)}", e);
        }
        catch (InvalidDataException)
        {
            db?.Dispose();
            throw;
        }
        flusher = new Timer(_ => Flush(), null, FlushInterval, FlushInterval);
    }

    /// <summary>
    /// Why the store could not be opened, and what to do: only a file SQLite finds damaged is called damaged — a data
    /// directory that cannot be written (read-only mount, another user's directory) is not.
    /// </summary>
    private string OpenProblem(SqliteException e)
    {
        var dir = System.IO.Path.GetDirectoryName(Path)!;
        var code = $"(SQLite error {e.SqliteErrorCode}: {e.Message})";
        const string writable = "make it writable by the user the coordinator runs as, or give `dtrain serve --data-dir` (Coordinator:DataDir) a writable directory";
        return (e.SqliteErrorCode, File.Exists(Path)) switch
        {
            // SQLITE_CANTOPEN with no file: it could not be created.
            (14, false) => $"cannot create the coordinator's job store: the data directory {dir} cannot be written (read-only, or not this user's) {code}; {writable}",
            // SQLITE_CANTOPEN, SQLITE_READONLY or SQLITE_PERM on a file that is there: it (or its directory, for the journal) cannot be written.
            (14 or 8 or 3, true) => $"cannot open the coordinator's job store for writing: the file or its directory {dir} is read-only, or not this user's {code}; {writable} (the store and its -wal and -shm files beside it)",
            // SQLITE_CORRUPT, SQLITE_NOTADB: the file is damaged.
            (11 or 26, _) => $"the coordinator's job store is damaged {code}; move the damaged file aside to start with no jobs",
            _ => $"cannot open the coordinator's job store {code}",
        };
    }

    /// <summary>Writes the job's current record now, after every queued write (its ledger steps first); false (and logged) when the disk refused it.</summary>
    public bool SaveNow(JobRecord job)
    {
        lock (pendingGate) dirty.Remove(job.Id);
        return Write([job]);
    }

    /// <summary>Queues the job's record (progress) for the next flush.</summary>
    public void SaveSoon(JobRecord job)
    {
        lock (pendingGate) dirty[job.Id] = job;
    }

    /// <summary>Queues a committed ledger step of <paramref name="jobId"/>.</summary>
    public void Committed(string jobId, LedgerEntry step)
    {
        var bytes = step.ToProto().ToByteArray();
        lock (pendingGate)
        {
            ledgerOps.Add(tx => Run(tx, "INSERT OR REPLACE INTO ledger (job_id, step, entry, hash) VALUES ($id, $step, $entry, $hash)",
                ("$id", jobId), ("$step", step.Step), ("$entry", bytes), ("$hash", Hash(bytes))));
        }
    }

    /// <summary>Queues the removal of <paramref name="jobId"/>'s ledger steps from <paramref name="step"/> on (a restart from its checkpoint).</summary>
    public void RolledBack(string jobId, long step)
    {
        lock (pendingGate)
            ledgerOps.Add(tx => Run(tx, "DELETE FROM ledger WHERE job_id = $id AND step >= $step", ("$id", jobId), ("$step", step)));
    }

    /// <summary>
    /// Queues a step or evaluation event of <paramref name="jobId"/> (<paramref name="seq"/>: its place among the job's
    /// events), written with the next flush: a fast job's steps cost one transaction a second, not one each.
    /// </summary>
    public void Recorded(string jobId, long seq, JobNotice e)
    {
        var bytes = ProtoMapper.EventOf(e).ToByteArray();
        var step = e switch
        {
            JobNotice.Eval v => v.AtStep,
            JobNotice.Step s => s.Report.Step,
            _ => throw new ArgumentException($"only step and evaluation events are kept, not {e.GetType().Name}", nameof(e)),
        };
        lock (pendingGate)
            ledgerOps.Add(tx => Run(tx, "INSERT OR REPLACE INTO events (job_id, seq, step, event) VALUES ($id, $seq, $step, $event)",
                ("$id", jobId), ("$seq", seq), ("$step", step), ("$event", bytes)));
    }

    /// <summary>
    /// The step and evaluation events of <paramref name="jobId"/> written so far (call <see cref="Flush"/> first for the
    /// queued ones), in order. Read on a connection of its own (the log lets readers and the writer go side by side), so
    /// a long history read by the dashboard never holds up the training loop's writes.
    /// </summary>
    public IReadOnlyList<JobNotice> Events(string jobId, out long lastSeq)
    {
        var events = new List<JobNotice>();
        lastSeq = 0;
        using var reader = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = Path, Mode = SqliteOpenMode.ReadOnly, Pooling = false }.ToString());
        reader.Open();
        using var cmd = reader.CreateCommand();
        cmd.CommandText = "SELECT seq, event FROM events WHERE job_id = $id ORDER BY seq";
        cmd.Parameters.AddWithValue("$id", jobId);
        using var r = cmd.ExecuteReader();
        while (r.Read())
        {
            lastSeq = r.GetInt64(0);
            try
            {
                events.Add(ProtoMapper.FromProto(JobEvent.Parser.ParseFrom((byte[])r[1])));
            }
            catch (Exception e) when (e is InvalidProtocolBufferException or InvalidDataException)
            {
                log.LogError("{Path}: event {Seq} of job {Id} is damaged ({Message}); left out", Path, lastSeq, jobId, e.Message);
            }
        }
        return events;
    }

    /// <summary>The place of <paramref name="jobId"/>'s newest stored event (0: none), so a restored job's events continue after it.</summary>
    public long LastSeq(string jobId)
    {
        lock (writeGate)
        {
            if (disposed) return 0;
            using var cmd = db.CreateCommand();
            cmd.CommandText = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = $id";
            cmd.Parameters.AddWithValue("$id", jobId);
            return (long)cmd.ExecuteScalar()!;
        }
    }

    /// <summary>Records a completed upload (its file is already fsynced in place) before the client is told its handle; false (and logged) when the disk refused it.</summary>
    public bool AddUpload(StoredUpload upload) => WriteNow($"upload {upload.Id}", tx => Run(tx,
        "INSERT OR REPLACE INTO uploads (id, owner, bytes, completed_unix_ms, name) VALUES ($id, $owner, $bytes, $done, $name)",
        ("$id", upload.Id), ("$owner", upload.Owner), ("$bytes", upload.Bytes), ("$done", upload.Completed.ToUnixTimeMilliseconds()), ("$name", upload.Name)));

    /// <summary>Forgets an upload (claimed by a job, or expired).</summary>
    public bool RemoveUpload(string id) => WriteNow($"upload {id}", tx => Run(tx, "DELETE FROM uploads WHERE id = $id", ("$id", id)));

    /// <summary>Every pending upload the store holds.</summary>
    public IReadOnlyList<StoredUpload> LoadUploads()
    {
        lock (writeGate)
        {
            using var cmd = db.CreateCommand();
            cmd.CommandText = "SELECT id, owner, bytes, completed_unix_ms, name FROM uploads ORDER BY id";
            using var r = cmd.ExecuteReader();
            var list = new List<StoredUpload>();
            while (r.Read()) list.Add(new StoredUpload(r.GetString(0), r.GetString(1), r.GetInt64(2), DateTimeOffset.FromUnixTimeMilliseconds(r.GetInt64(3)), r.GetString(4)));
            return list;
        }
    }

    private bool WriteNow(string what, Action<SqliteTransaction> op)
    {
        lock (writeGate)
        {
            if (disposed) return false;
            try
            {
                using var tx = db.BeginTransaction();
                op(tx);
                tx.Commit();
                return true;
            }
            catch (SqliteException e)
            {
                log.LogError(e, "{Path}: could not save {What}: {Message}", Path, what, e.Message);
                return false;
            }
        }
    }

    /// <summary>Writes what is queued.</summary>
    public void Flush() => Write([]);

    private bool Write(IReadOnlyList<JobRecord> now)
    {
        lock (writeGate)
        {
            if (disposed) return false;
            List<JobRecord> jobs;
            List<Action<SqliteTransaction>> ops;
            lock (pendingGate)
            {
                jobs = [.. dirty.Values, .. now];
                dirty.Clear();
                ops = [.. ledgerOps];
                ledgerOps.Clear();
            }
            if (jobs.Count == 0 && ops.Count == 0) return true;
            try
            {
                using var tx = db.BeginTransaction();
                foreach (var op in ops) op(tx);
                foreach (var job in jobs)
                {
                    var record = JsonSerializer.Serialize(job.Document(), JobStoreJson.Default.JobDocument);
                    Run(tx, "INSERT OR REPLACE INTO jobs (id, record, hash, resume_path, queue_order) VALUES ($id, $record, $hash, $resume, $order)",
                        ("$id", job.Id), ("$record", record), ("$hash", Hash(record)), ("$resume", job.Resume?.Path ?? ""), ("$order", job.QueueOrder));
                }
                tx.Commit();
                return true;
            }
            catch (SqliteException e)
            {
                // The jobs go on; what could not be written is said, and written again with the next change.
                log.LogError(e, "{Path}: could not save {Jobs}: {Message}", Path, string.Join(", ", jobs.Select(j => j.Id).DefaultIfEmpty("ledger steps")), e.Message);
                return false;
            }
        }
    }

    /// <summary>Every job the store holds, in id order, with its ledger; a row that does not match its hash is skipped with an error naming it.</summary>
    public IReadOnlyList<StoredJob> LoadAll()
    {
        lock (writeGate)
        {
            var ledgers = new Dictionary<string, List<LedgerEntry>>();
            using (var cmd = db.CreateCommand())
            {
                cmd.CommandText = "SELECT job_id, step, entry, hash FROM ledger ORDER BY job_id, step";
                using var r = cmd.ExecuteReader();
                while (r.Read())
                {
                    var (id, step, bytes) = (r.GetString(0), r.GetInt64(1), (byte[])r[2]);
                    if (!Hash(bytes).AsSpan().SequenceEqual((byte[])r[3]))
                    {
                        log.LogError("{Path}: ledger step {Step} of job {Id} is damaged (hash mismatch); left out", Path, step, id);
                        continue;
                    }
                    if (!ledgers.TryGetValue(id, out var list)) ledgers[id] = list = [];
                    list.Add(ProtoMapper.FromProto(LedgerStep.Parser.ParseFrom(bytes)));
                }
            }
            var jobs = new List<StoredJob>();
            using (var cmd = db.CreateCommand())
            {
                cmd.CommandText = "SELECT id, record, hash, resume_path, queue_order FROM jobs ORDER BY id";
                using var r = cmd.ExecuteReader();
                while (r.Read())
                {
                    var (id, text) = (r.GetString(0), r.GetString(1));
                    JobDocument job;
                    try
                    {
                        if (!Hash(text).AsSpan().SequenceEqual((byte[])r[2])) throw new InvalidDataException("hash mismatch");
                        job = JsonSerializer.Deserialize(text, JobStoreJson.Default.JobDocument) ?? throw new InvalidDataException("an empty record");
                        if (job.Id != id) throw new InvalidDataException($"the record is of job \"{job.Id}\"");
                    }
                    catch (Exception e) when (e is InvalidDataException or JsonException)
                    {
                        log.LogError("{Path}: the record of job {Id} is damaged ({Message}); the job is left out (its directory stays; an admin can `dtrain resume` it)", Path, id, e.Message);
                        continue;
                    }
                    jobs.Add(new StoredJob(job, r.GetString(3), r.GetInt64(4), ledgers.TryGetValue(id, out var l) ? l : []));
                }
            }
            return jobs;
        }
    }

    private static byte[] Hash(byte[] bytes) => SHA256.HashData(bytes);

    private static byte[] Hash(string text) => SHA256.HashData(Encoding.UTF8.GetBytes(text));

    /// <summary>
    /// Rewrites every job of the first format (table jobs_v0: proto <c>JobInfo</c> bytes) as a JSON record, then drops
    /// the old table. A row that does not match its hash or does not parse is left out with an error naming the job, as
    /// loading it would have done.
    /// </summary>
    private void MigrateFirstFormat(SqliteTransaction tx)
    {
        var rows = new List<(string Id, byte[] Info, byte[] Hash, string Resume, long Order)>();
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "SELECT id, info, hash, resume_path, queue_order FROM jobs_v0 ORDER BY id";
            using var r = cmd.ExecuteReader();
            while (r.Read()) rows.Add((r.GetString(0), (byte[])r[1], (byte[])r[2], r.GetString(3), r.GetInt64(4)));
        }
        var migrated = 0;
        foreach (var (id, bytes, hash, resume, order) in rows)
        {
            JobDocument job;
            try
            {
                if (!Hash(bytes).AsSpan().SequenceEqual(hash)) throw new InvalidDataException("hash mismatch");
                var info = JobInfo.Parser.ParseFrom(bytes);
                if (info.JobId != id) throw new InvalidDataException($"the record is of job \"{info.JobId}\"");
                job = ProtoMapper.FromProto(info);
            }
            catch (Exception e) when (e is InvalidDataException or InvalidProtocolBufferException)
            {
                log.LogError("{Path}: the record of job {Id} is damaged ({Message}); the job is left out (its directory stays; an admin can `dtrain resume` it)", Path, id, e.Message);
                continue;
            }
            var record = JsonSerializer.Serialize(job, JobStoreJson.Default.JobDocument);
            Run(tx, "INSERT OR REPLACE INTO jobs (id, record, hash, resume_path, queue_order) VALUES ($id, $record, $hash, $resume, $order)",
                ("$id", id), ("$record", record), ("$hash", Hash(record)), ("$resume", resume), ("$order", order));
            migrated++;
        }
        Run(tx, "DROP TABLE jobs_v0");
        log.LogInformation("{Path}: job store migrated from schema version 0 (proto records) to {Version} (JSON records): {Count} job(s)", Path, SchemaVersion, migrated);
    }

    private object? Scalar(string sql)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        return cmd.ExecuteScalar();
    }

    /// <summary>The columns of <paramref name="table"/> (none when it does not exist).</summary>
    private HashSet<string> Columns(string table)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = $"SELECT name FROM pragma_table_info('{table}')";
        using var r = cmd.ExecuteReader();
        var names = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        while (r.Read()) names.Add(r.GetString(0));
        return names;
    }

    private void Execute(string sql)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    private void Run(SqliteTransaction tx, string sql, params (string Name, object Value)[] parameters)
    {
        using var cmd = db.CreateCommand();
        cmd.Transaction = tx;
        cmd.CommandText = sql;
        foreach (var (name, value) in parameters) cmd.Parameters.AddWithValue(name, value);
        cmd.ExecuteNonQuery();
    }

    public void Dispose()
    {
        flusher.Dispose();
        Flush();
        lock (writeGate)
        {
            if (disposed) return;
            disposed = true;
            db.Dispose();
        }
    }
}
