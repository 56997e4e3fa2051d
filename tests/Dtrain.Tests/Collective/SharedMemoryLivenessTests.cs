using System.Diagnostics;
using Dtrain.Collective;

namespace Dtrain.Tests.Collective;

/// <summary>How a shared-memory peer (ring side or group rank) is judged alive: its process, and its heartbeat counter.</summary>
public class SharedMemoryLivenessTests
{
    [Fact]
    public void A_peer_whose_heartbeat_moves_is_alive_and_one_whose_heartbeat_stops_is_silent()
    {
        var peer = new PeerLiveness(TimeSpan.FromMilliseconds(200));
        var ns = SharedMemoryLiveness.OwnPidNamespace;
        Assert.Equal(PeerLiveness.Verdict.Alive, peer.Check(Environment.ProcessId, ns, 1));
        Thread.Sleep(300);
        Assert.Equal(PeerLiveness.Verdict.Alive, peer.Check(Environment.ProcessId, ns, 2));   // it moved
        Thread.Sleep(300);
        Assert.Equal(PeerLiveness.Verdict.Silent, peer.Check(Environment.ProcessId, ns, 2));  // it did not
    }

    [Fact]
    public void A_peer_whose_process_has_exited_in_our_pid_namespace_died_and_one_elsewhere_is_judged_by_its_heartbeat()
    {
        using var exited = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        exited.WaitForExit();
        var ns = SharedMemoryLiveness.OwnPidNamespace;
        Assert.NotEqual(0, ns);
        Assert.Equal(PeerLiveness.Verdict.Died, new PeerLiveness().Check(exited.Id, ns, 1));
        // The same pid in another pid namespace says nothing about that process: only the heartbeat counts.
        Assert.Equal(PeerLiveness.Verdict.Alive, new PeerLiveness().Check(exited.Id, ns + 1, 1));
    }

    [Fact]
    public async Task The_heartbeat_thread_bumps_a_started_counter_and_never_after_it_was_stopped()
    {
        var beating = new Counter();
        SharedMemoryLiveness.Start(beating);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (Volatile.Read(ref beating.Beats) < 2)
        {
            Assert.True(DateTime.UtcNow < deadline, "no heartbeat within 10 s");
            await Task.Delay(50);
        }
        SharedMemoryLiveness.Stop(beating);
        var after = Volatile.Read(ref beating.Beats);
        await Task.Delay(800);
        Assert.Equal(after, Volatile.Read(ref beating.Beats));
    }

    private sealed class Counter : SharedMemoryLiveness.IBeating
    {
        public int Beats;

        public void Beat() => Interlocked.Increment(ref Beats);
    }
}
