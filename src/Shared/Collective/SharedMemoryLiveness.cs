using System.Diagnostics;

namespace Dtrain.Collective;

/// <summary>
/// How a process shows the peers it shares memory with that it lives, and how it reads theirs — the same for a
/// <see cref="SharedMemoryRing"/> side and a rank of a <see cref="SharedMemoryAllReduce"/> group. Each writes its process
/// id and pid namespace into the shared header, and one thread of this process (not a thread-pool timer: a busy pool
/// must not make it look dead) bumps a heartbeat counter of each live structure every 250 ms. A peer is gone when its
/// process has died (checked when it is in our pid namespace) or its counter has not moved for
/// <see cref="CollectiveTimeouts.PeerSilentAfter"/> (each watcher is given its own, see <see cref="PeerLiveness"/>).
/// </summary>
internal static class SharedMemoryLiveness
{
    /// <summary>This process's pid namespace (the inode of /proc/self/ns/pid), 0 when unknown.</summary>
    public static readonly long OwnPidNamespace = PidNamespace();

    private static readonly List<WeakReference<IBeating>> Live = [];
    private static Thread? thread;

    /// <summary>Something with a heartbeat counter in shared memory.</summary>
    public interface IBeating
    {
        /// <summary>Bumps the counter (called under the heartbeat's lock; never after <see cref="Stop"/> returned).</summary>
        void Beat();
    }

    /// <summary>Bumps <paramref name="beating"/>'s counter every 250 ms from now until <see cref="Stop"/>.</summary>
    public static void Start(IBeating beating)
    {
        lock (Live)
        {
            Live.Add(new WeakReference<IBeating>(beating));
            thread ??= StartThread();
        }
    }

    /// <summary>No more beats for <paramref name="beating"/>: once this returns, its memory may be unmapped.</summary>
    public static void Stop(IBeating beating)
    {
        lock (Live) Live.RemoveAll(w => !w.TryGetTarget(out var b) || ReferenceEquals(b, beating));
    }

    private static Thread StartThread()
    {
        var thread = new Thread(() =>
        {
            while (true)
            {
                Thread.Sleep(250);
                lock (Live)
                {
                    for (var i = Live.Count - 1; i >= 0; i--)
                    {
                        if (Live[i].TryGetTarget(out var beating)) beating.Beat();
                        else Live.RemoveAt(i);
                    }
                }
            }
        })
        { IsBackground = true, Name = "dtrain shm heartbeat" };
        thread.Start();
        return thread;
    }

    internal static bool ProcessAlive(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var close = stat.LastIndexOf(')');
            return close < 0 || close + 2 >= stat.Length || stat[close + 2] is not ('Z' or 'X');
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return true;
        }
    }

    private static long PidNamespace()
    {
        try
        {
            var target = new FileInfo("/proc/self/ns/pid").LinkTarget ?? "";
            var open = target.IndexOf('[', StringComparison.Ordinal);
            return open >= 0 && long.TryParse(target.AsSpan(open + 1, target.Length - open - 2), out var inode) ? inode : 0;
        }
        catch (IOException)
        {
            return 0;
        }
        catch (UnauthorizedAccessException)
        {
            return 0;
        }
    }
}

/// <summary>What a peer has shown of its life so far, and whether it still lives (<see cref="SharedMemoryLiveness"/>).</summary>
/// <param name="silentAfter">A heartbeat that has not moved for this long means the peer is gone (default <see cref="CollectiveTimeouts.PeerSilentAfter"/>).</param>
internal sealed class PeerLiveness(TimeSpan? silentAfter = null)
{
    /// <summary>How long a heartbeat may stand still before the peer counts as gone.</summary>
    public TimeSpan SilentAfter { get; } = silentAfter ?? CollectiveTimeouts.Default.PeerSilentAfter;

    private long lastBeat = -1;
    private long lastBeatAt = Stopwatch.GetTimestamp();
    private long lastPidCheckAt;

    /// <summary>How the peer is gone: its process died, or its heartbeat stopped.</summary>
    public enum Verdict
    {
        Alive,
        Died,
        Silent,
    }

    /// <summary>Reads the peer's process id, pid namespace and heartbeat counter as it wrote them; its process is checked at most every 100 ms.</summary>
    public Verdict Check(int pid, long pidNamespace, long beat)
    {
        var now = Stopwatch.GetTimestamp();
        if (Stopwatch.GetElapsedTime(lastPidCheckAt, now) > TimeSpan.FromMilliseconds(100))
        {
            lastPidCheckAt = now;
            if (pid > 0 && pidNamespace != 0 && pidNamespace == SharedMemoryLiveness.OwnPidNamespace && pid != Environment.ProcessId
                && !SharedMemoryLiveness.ProcessAlive(pid))
                return Verdict.Died;
        }
        if (beat != lastBeat)
        {
            lastBeat = beat;
            lastBeatAt = now;
        }
        else if (Stopwatch.GetElapsedTime(lastBeatAt, now) > SilentAfter)
            return Verdict.Silent;
        return Verdict.Alive;
    }
}
