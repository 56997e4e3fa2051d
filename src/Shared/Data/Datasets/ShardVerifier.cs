using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Dtrain.Data.Datasets;

/// <summary>
/// When a shard's SHA-256 is checked against the manifest (its size always is, when it is opened). With
/// <see cref="ShardVerification.Background"/> and a dataset of format version 2 (block hashes in the manifest), only the
/// blocks the job reads are checked: a local shard's as a read first touches them, queued here; an S3 shard's as each
/// block arrives, before it is cached or used.
/// </summary>
public enum ShardVerification
{
    /// <summary>Read whole when it is opened, before the first read returns (what <c>dtrain train</c> and the coordinator do).</summary>
    AtOpen,
    /// <summary>
    /// Format version 2: each block a read touches is checked — a local shard's on one low-priority background thread
    /// through a plain file stream (never the memory map, so the process maps no page of it), an S3 shard's as it
    /// arrives — and no other. Version 1: each shard is read whole afterwards on that thread (an S3 shard through the
    /// store's block cache, which fetches the blocks no read fetched yet). The first read does not wait for it. Once hurried
    /// (<see cref="StoredDataset.HurryVerification"/>: a job past half its steps, or waiting for the checks) the rest is
    /// read at normal priority. A mismatch is reported by
    /// <see cref="StoredDataset.ThrowIfCorrupt"/> and <see cref="StoredDataset.VerifiedAsync"/> (what a worker does).
    /// </summary>
    Background,
}

/// <summary>
/// Checks the SHA-256 of the files (or blocks of files) it is given, one after the other in the order given, on one background thread at the
/// lowest priority (nice 19 on Linux): the first mismatch (or unreadable file) is kept as a <see cref="DatasetException"/>
/// naming the dataset, the file and its URI, and nothing more is checked. Once <see cref="Hurry"/> is called (a job nearing
/// its end, or waiting for the checks), the rest is checked at the caller's priority instead: a thread started by the
/// caller (so with its priority: nice 19 cannot be undone without privileges) takes over the queue and the file being
/// read, where the low-priority thread left it, and the low-priority thread ends.
/// </summary>
sealed class ShardVerifier : IDisposable
{
    const string ThreadName = "dataset-verify";

    readonly string dataset;
    readonly Func<string, string> uriOf;
    readonly object gate = new();
    readonly LinkedList<Pending> queue = new();
    readonly HashSet<string> seen = new(StringComparer.Ordinal);
    readonly List<Thread> threads = [];
    readonly List<(int Id, bool Low)> threadIds = [];
    volatile bool stopping;
    volatile bool hurried;
    bool started;
    int checking;
    TaskCompletionSource idle = Done();
    volatile DatasetException? failure;

    public ShardVerifier(string dataset, Func<string, string> uriOf)
    {
        this.dataset = dataset;
        this.uriOf = uriOf;
    }

    /// <summary>The first file that did not match (or could not be read), or null.</summary>
    public DatasetException? Failure => failure;

    /// <summary>How many whole files have been checked and matched.</summary>
    public int Verified { get; private set; }

    /// <summary>How many blocks (<see cref="EnqueueBlock"/>) have been checked and matched.</summary>
    public long BlocksVerified { get; private set; }

    /// <summary>Whether the checks left run at the caller's priority (<see cref="Hurry"/>), no longer at the lowest.</summary>
    public bool Hurried => hurried;

    /// <summary>On Linux: the threads that ran the checks (their ids as in /proc/self/task), and whether each is the low-priority one.</summary>
    internal (int Id, bool Low)[] ThreadIds
    {
        get
        {
            lock (gate) return [.. threadIds];
        }
    }

    /// <summary>Completes when every file given so far has been checked (or one failed, or the verifier stopped).</summary>
    public Task Idle
    {
        get
        {
            lock (gate) return idle.Task;
        }
    }

    /// <summary>Queues <paramref name="file"/> (at <paramref name="path"/>) unless it was given before.</summary>
    public void Enqueue(DatasetFile file, string path) =>
        Enqueue(file, () => new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1, FileOptions.SequentialScan));

    /// <summary>Queues <paramref name="file"/>, read whole from the stream <paramref name="open"/> gives (a remote file's), unless it was given before.</summary>
    public void Enqueue(DatasetFile file, Func<Stream> open) => Add(file.Name, new Pending(file, open, null));

    /// <summary>
    /// Queues block <paramref name="index"/> of <paramref name="file"/> (format version 2: checked against
    /// <see cref="DatasetFile.BlockSha256"/>), read from the file at <paramref name="path"/> through a plain file stream,
    /// unless it was given before.
    /// </summary>
    public void EnqueueBlock(DatasetFile file, long index, string path)
    {
        var blockBytes = file.BlockBytes ?? throw new ArgumentException($"{file.Name} records no block hashes", nameof(file));
        Add($"{file.Name}#{index}", new Pending(file, () =>
        {
            var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1, FileOptions.RandomAccess);
            s.Position = index * (long)blockBytes;
            return s;
        }, index));
    }

    void Add(string key, Pending pending)
    {
        lock (gate)
        {
            if (stopping || failure is not null || !seen.Add(key)) return;
            queue.AddLast(pending);
            if (idle.Task.IsCompleted) idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (!started)
            {
                started = true;
                Start(low: !hurried);
            }
            else Monitor.PulseAll(gate);
        }
    }

    /// <summary>
    /// From now on the files left (and the one being read) are checked at the caller's priority, not the lowest: on a
    /// thread started here, which inherits the calling thread's priority. Idempotent.
    /// </summary>
    public void Hurry()
    {
        lock (gate)
        {
            if (hurried || stopping) return;
            hurried = true;
            // Nothing queued yet: the first file starts the thread at the caller's priority.
            if (!started) return;
            // Idle again until the new thread has looked at the queue.
            if (idle.Task.IsCompleted) idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Start(low: false);
            // The low-priority thread steps aside (at its next chunk, or now if it waits for files).
            Monitor.PulseAll(gate);
        }
    }

    void Start(bool low)
    {
        var thread = new Thread(() => Run(low)) { IsBackground = true, Name = ThreadName, Priority = low ? ThreadPriority.Lowest : ThreadPriority.Normal };
        threads.Add(thread);
        thread.Start();
    }

    void Run(bool low)
    {
        if (low) LowerPriority();
        if (OperatingSystem.IsLinux())
        {
            try
            {
                var id = Native.gettid();
                lock (gate) threadIds.Add((id, low));
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
                // An old C library: no id to tell.
            }
        }
        var buffer = new byte[1 << 20];
        while (true)
        {
            Pending next;
            lock (gate)
            {
                while (queue.Count == 0 && !stopping && !(low && hurried))
                {
                    if (checking == 0) idle.TrySetResult();
                    Monitor.Wait(gate);
                }
                if (stopping)
                {
                    idle.TrySetResult();
                    return;
                }
                // Hurried: the thread at the caller's priority goes on.
                if (low && hurried) return;
                next = queue.First!.Value;
                queue.RemoveFirst();
                checking++;
            }
            var (done, problem) = Check(next, buffer, low);
            lock (gate)
            {
                checking--;
                if (!done)
                {
                    // Hurried in the middle of a file: handed over where it was.
                    queue.AddFirst(next);
                    Monitor.PulseAll(gate);
                    return;
                }
                next.Dispose();
                if (problem is null)
                {
                    if (!stopping && next.Block is null) Verified++;
                    else if (!stopping) BlocksVerified++;
                    if (queue.Count == 0 && checking == 0) idle.TrySetResult();
                    continue;
                }
                failure ??= problem;
                foreach (var p in queue) p.Dispose();
                queue.Clear();
                idle.TrySetResult();
                Monitor.PulseAll(gate);
                return;
            }
        }
    }

    /// <summary>
    /// Reads on where <paramref name="p"/> was left: done with the file's (block's) problem, or null when it matches (or the
    /// verifier stopped meanwhile); not done when the low-priority thread was hurried (the file is handed over).
    /// </summary>
    (bool Done, DatasetException? Problem) Check(Pending p, byte[] buffer, bool low)
    {
        var uri = uriOf(p.File.Name);
        try
        {
            p.Stream ??= p.Open();
            p.Hash ??= IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            // A block: exactly its bytes; a whole file: to its end.
            var length = p.Block is { } b ? Math.Min(p.File.BlockBytes!.Value, p.File.Bytes - b * p.File.BlockBytes!.Value) : long.MaxValue;
            int n;
            while (p.Read < length && (n = p.Stream.Read(buffer, 0, (int)Math.Min(buffer.Length, length - p.Read))) > 0)
            {
                if (stopping) return (true, null);
                p.Hash.AppendData(buffer, 0, n);
                p.Read += n;
                if (low && hurried) return (false, null);
            }
            if (p.Block is { } block)
            {
                if (p.Read != length)
                    return (true, new DatasetException(dataset, p.File.Name, $"is truncated: {p.File.DescribeBlock(block)} ends after {p.Read:N0} of its {length:N0} bytes ({uri}): the dataset changed under the job"));
                var got = Convert.ToHexStringLower(p.Hash.GetHashAndReset());
                var expected = p.File.BlockSha256![(int)block];
                return (true, got.Equals(expected, StringComparison.OrdinalIgnoreCase) ? null
                    : new DatasetException(dataset, p.File.Name, $"{p.File.DescribeBlock(block)} does not match its SHA-256 in the manifest ({uri}: SHA-256 is {got}, expected {expected.ToLowerInvariant()}): the dataset changed under the job"));
            }
            if (p.Read != p.File.Bytes)
                return (true, new DatasetException(dataset, p.File.Name, $"{PreparedDataset.SizeProblem(p.Read, p.File.Bytes)} ({uri}): the dataset changed under the job"));
            var actual = Convert.ToHexStringLower(p.Hash.GetHashAndReset());
            return (true, actual.Equals(p.File.Sha256, StringComparison.OrdinalIgnoreCase) ? null
                : new DatasetException(dataset, p.File.Name, $"does not match its SHA-256 in the manifest ({uri}: SHA-256 is {actual}, expected {p.File.Sha256.ToLowerInvariant()}): the dataset changed under the job"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return (true, new DatasetException(dataset, p.File.Name, $"cannot be read to check its SHA-256 ({uri}): {e.Message}"));
        }
        catch (DatasetException e)
        {
            // A remote file's read (its block changed, or could not be fetched): named already.
            return (true, e);
        }
        catch (Dtrain.Data.Storage.DatasetStorageException e)
        {
            return (true, new DatasetException(dataset, p.File.Name, $"cannot be read to check its SHA-256 ({uri}): {e.Problem}"));
        }
        catch (Exception e) when (stopping && e is OperationCanceledException or ObjectDisposedException)
        {
            return (true, null);
        }
    }

    /// <summary>A file (or one block of it) to check, and how far it was read (its stream and hash so far), so that another thread can go on.</summary>
    sealed class Pending(DatasetFile file, Func<Stream> open, long? block) : IDisposable
    {
        public DatasetFile File { get; } = file;
        /// <summary>The block to check (its stream opened at the block's start), or null for the whole file.</summary>
        public long? Block { get; } = block;
        public Func<Stream> Open { get; } = open;
        public Stream? Stream { get; set; }
        public IncrementalHash? Hash { get; set; }
        public long Read { get; set; }

        public void Dispose()
        {
            Stream?.Dispose();
            Hash?.Dispose();
        }
    }

    /// <summary>Nice 19 for this thread on Linux (a thread is a task there), so training threads come first; elsewhere only the .NET priority.</summary>
    static void LowerPriority()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            _ = Native.setpriority(0 /* PRIO_PROCESS: a thread id on Linux */, Native.gettid(), 19);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // An old C library: the thread keeps the process's priority.
        }
    }

    static TaskCompletionSource Done()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        done.SetResult();
        return done;
    }

    /// <summary>Stops without waiting: a file being read is left after its current chunk (a read cancelled now is no failure).</summary>
    public void Stop()
    {
        lock (gate)
        {
            stopping = true;
            Monitor.PulseAll(gate);
        }
    }

    /// <summary>Stops: a file being read is left after its current chunk; waits for the threads to end.</summary>
    public void Dispose()
    {
        Thread[] running;
        lock (gate)
        {
            stopping = true;
            Monitor.PulseAll(gate);
            running = [.. threads];
        }
        foreach (var t in running) t.Join();
        lock (gate)
        {
            foreach (var p in queue) p.Dispose();
            queue.Clear();
        }
    }

    static class Native
    {
        [DllImport("libc")]
        public static extern int gettid();

        [DllImport("libc")]
        public static extern int setpriority(int which, int who, int prio);
    }
}
