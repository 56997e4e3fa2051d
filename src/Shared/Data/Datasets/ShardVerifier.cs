using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Dtrain.Data.Datasets;

/// <summary>When a local shard's SHA-256 is checked against the manifest (its size always is, when it is opened).</summary>
public enum ShardVerification
{
    /// <summary>Read whole when it is opened, before the first read returns (what <c>dtrain train</c> and the coordinator do).</summary>
    AtOpen,
    /// <summary>
    /// Read whole afterwards on one low-priority background thread, through a plain file stream (never the memory map,
    /// so the process maps no page of it): the first read does not wait for it. A mismatch is reported by
    /// <see cref="StoredDataset.ThrowIfCorrupt"/> and <see cref="StoredDataset.VerifiedAsync"/> (what a worker does).
    /// </summary>
    Background,
}

/// <summary>
/// Checks the SHA-256 of the files it is given, one after the other in the order given, on one background thread at the
/// lowest priority (nice 19 on Linux): the first mismatch (or unreadable file) is kept as a <see cref="DatasetException"/>
/// naming the dataset, the file and its URI, and nothing more is checked.
/// </summary>
sealed class ShardVerifier : IDisposable
{
    readonly string dataset;
    readonly Func<string, string> uriOf;
    readonly object gate = new();
    readonly Queue<(DatasetFile File, string Path)> queue = new();
    readonly HashSet<string> seen = new(StringComparer.Ordinal);
    volatile bool stopping;
    Thread? thread;
    TaskCompletionSource idle = Done();
    volatile DatasetException? failure;

    public ShardVerifier(string dataset, Func<string, string> uriOf)
    {
        this.dataset = dataset;
        this.uriOf = uriOf;
    }

    /// <summary>The first file that did not match (or could not be read), or null.</summary>
    public DatasetException? Failure => failure;

    /// <summary>How many files have been checked and matched.</summary>
    public int Verified { get; private set; }

    /// <summary>Completes when every file given so far has been checked (or one failed, or the verifier stopped).</summary>
    public Task Idle
    {
        get
        {
            lock (gate) return idle.Task;
        }
    }

    /// <summary>Queues <paramref name="file"/> (at <paramref name="path"/>) unless it was given before.</summary>
    public void Enqueue(DatasetFile file, string path)
    {
        lock (gate)
        {
            if (stopping || failure is not null || !seen.Add(file.Name)) return;
            queue.Enqueue((file, path));
            if (idle.Task.IsCompleted) idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (thread is null)
            {
                thread = new Thread(Run) { IsBackground = true, Name = "dataset-verify", Priority = ThreadPriority.Lowest };
                thread.Start();
            }
            else Monitor.Pulse(gate);
        }
    }

    void Run()
    {
        LowerPriority();
        var buffer = new byte[1 << 20];
        while (true)
        {
            (DatasetFile File, string Path) next;
            lock (gate)
            {
                while (queue.Count == 0 && !stopping)
                {
                    idle.TrySetResult();
                    Monitor.Wait(gate);
                }
                if (stopping)
                {
                    idle.TrySetResult();
                    return;
                }
                next = queue.Dequeue();
            }
            var problem = Check(next.File, next.Path, buffer);
            lock (gate)
            {
                if (problem is null)
                {
                    if (!stopping) Verified++;
                    continue;
                }
                failure = problem;
                queue.Clear();
                idle.TrySetResult();
                return;
            }
        }
    }

    /// <summary>The file's problem, or null when it matches (or the verifier stopped meanwhile).</summary>
    DatasetException? Check(DatasetFile file, string path, byte[] buffer)
    {
        var uri = uriOf(file.Name);
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 1, FileOptions.SequentialScan);
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            long read = 0;
            int n;
            while ((n = stream.Read(buffer)) > 0)
            {
                if (stopping) return null;
                hash.AppendData(buffer, 0, n);
                read += n;
            }
            if (read != file.Bytes)
                return new DatasetException(dataset, file.Name, $"{PreparedDataset.SizeProblem(read, file.Bytes)} ({uri}): the dataset changed under the job");
            var actual = Convert.ToHexStringLower(hash.GetHashAndReset());
            return actual.Equals(file.Sha256, StringComparison.OrdinalIgnoreCase) ? null
                : new DatasetException(dataset, file.Name, $"does not match its SHA-256 in the manifest ({uri}: SHA-256 is {actual}, expected {file.Sha256.ToLowerInvariant()}): the dataset changed under the job");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new DatasetException(dataset, file.Name, $"cannot be read to check its SHA-256 ({uri}): {e.Message}");
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

    /// <summary>Stops: a file being read is left after its current chunk; waits for the thread to end.</summary>
    public void Dispose()
    {
        Thread? running;
        lock (gate)
        {
            stopping = true;
            Monitor.PulseAll(gate);
            running = thread;
        }
        running?.Join();
    }

    static class Native
    {
        [DllImport("libc")]
        public static extern int gettid();

        [DllImport("libc")]
        public static extern int setpriority(int which, int who, int prio);
    }
}
