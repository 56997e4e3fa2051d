using Dtrain.Cluster;
using Dtrain.Distributed;
using Dtrain.Server;

namespace Dtrain.Tests.Observability;

/// <summary>The diagnosis rule on its own: who lags, from the phases workers reported and their heartbeat ages.</summary>
public class StallDiagnosisTests
{
    static readonly DateTimeOffset Now = new(2026, 1, 1, 12, 0, 0, TimeSpan.Zero);

    static WorkerRecord Worker(string id, double heartbeatAgo, string phase, double inPhase, string waitingOn = "", string detail = "", long step = 17)
    {
        var w = new WorkerRecord(id, "", "http://127.0.0.1:1", WorkerCapabilities.Unknown, Now.AddMinutes(-5))
        {
            JobId = "job-0001",
            LastHeartbeat = Now.AddSeconds(-heartbeatAgo),
            Activity = new ActivitySnapshot(phase, detail, step, TimeSpan.FromMilliseconds((long)(inPhase * 1000)), waitingOn, "", "", 0, 0, ""),
        };
        w.Apply(MembershipEvent.Ready);
        w.Apply(MembershipEvent.Reserve);
        return w;
    }

    [Fact]
    public void A_silent_worker_is_named_with_its_last_phase_and_the_others_wait_on_it()
    {
        var stall = StallDiagnosis.Diagnose(
        [
            Worker("w1", 0.2, "all-reduce", 41, "w3", "reduce-scatter step 1/2 piece 5/8"),
            Worker("w2", 0.3, "all-reduce", 41, "w3", "reduce-scatter step 1/2 piece 5/8"),
            Worker("w3", 41, "backward", 1),
        ], Now, 5);
        Assert.NotNull(stall);
        Assert.Equal(["w3"], stall.Culprits);
        Assert.Equal("w3 in backward for 42 s (last heartbeat 41 s ago), step 17; all others in all-reduce reduce-scatter step 1/2 piece 5/8, waiting on w3", stall.Text);
    }

    [Fact]
    public void A_worker_that_keeps_heart_beating_but_is_waited_on_is_found_through_the_chain()
    {
        var stall = StallDiagnosis.Diagnose(
        [
            Worker("w1", 0.1, "all-reduce", 8, "w3", "all-gather step 1/2 piece 1/4"),
            Worker("w2", 0.1, "all-reduce", 8, "w1", "all-gather step 2/2 piece 2/4"),
            Worker("w3", 0.1, "forward", 9),
        ], Now, 5);
        Assert.NotNull(stall);
        Assert.Equal(["w3"], stall.Culprits);
        Assert.StartsWith("w3 in forward for 9 s (last heartbeat 0 s ago), step 17; others: ", stall.Text);
        Assert.Contains("w2 in all-reduce all-gather step 2/2 piece 2/4, waiting on w1 (which waits on w3) for 8 s", stall.Text);
    }

    [Fact]
    public void No_stall_while_every_worker_computes_or_waits_less_than_the_threshold()
    {
        Assert.Null(StallDiagnosis.Diagnose([Worker("w1", 0.5, "forward", 30), Worker("w2", 0.5, "backward", 30)], Now, 5));
        Assert.Null(StallDiagnosis.Diagnose([Worker("w1", 0.5, "all-reduce", 2, "w2"), Worker("w2", 0.5, "backward", 6)], Now, 5));
        // A lost worker is the job's business (it goes on without it, or fails): not a stall.
        var lost = Worker("w2", 60, "backward", 1);
        lost.Apply(MembershipEvent.Lose);
        Assert.Null(StallDiagnosis.Diagnose([Worker("w1", 0.5, "forward", 1), lost], Now, 5));
    }

    [Fact]
    public void A_lost_workers_message_carries_its_last_phase()
    {
        var w = Worker("w3", 10, "backward", 2);
        Assert.Equal(", last seen in backward for 12 s at step 17", w.LastSeenDoing(Now));
        Assert.Equal("", Worker("w1", 10, "idle", 2).LastSeenDoing(Now));
    }

    [Fact]
    public void A_worker_frozen_while_it_waited_is_named_once_its_heartbeat_is_late_not_the_one_its_stale_report_names()
    {
        // w2 stopped 2.9 s ago while it waited on w1 (its report says so); w1 and w3 now wait on it. Silent only at 5 s.
        WorkerRecord[] workers = [Worker("w1", 0.1, "all-reduce", 3, "w2"), Worker("w2", 2.9, "all-reduce", 0.2, "w1"), Worker("w3", 0.1, "all-reduce", 3, "w2")];
        var stuck = StallDiagnosis.Diagnose(workers, Now, 3, silentSeconds: 5);
        Assert.NotNull(stuck);
        Assert.Empty(stuck.Culprits);   // without the rule: a cycle
        var stall = StallDiagnosis.Diagnose(workers, Now, 3, silentSeconds: 5, lateSeconds: 0.6);
        Assert.NotNull(stall);
        Assert.Equal(["w2"], stall.Culprits);
        Assert.StartsWith("w2 in all-reduce, waiting on w1 for 3 s (last heartbeat 3 s ago)", stall.Text);
        // A worker whose heartbeats come on time is still followed through its report.
        Assert.Empty(StallDiagnosis.Diagnose([Worker("w1", 0.1, "all-reduce", 7, "w2"), Worker("w2", 0.1, "all-reduce", 7, "w1")], Now, 5, lateSeconds: 0.6)!.Culprits);
    }

    [Fact]
    public void A_worker_frozen_while_it_waited_names_itself_before_the_ones_waiting_on_it_have_waited_long()
    {
        // HangDiagnosisTests under CI load: w3 stopped 2.99 s ago in a wait on w1 that its report still shows (3.01 s in
        // phase); w1 and w2 went on to the next step and have waited on w3 for less than the threshold. w3's own stale
        // report led to w1 (a cycle through w1's wait on w3, or w1 itself when it computed): w3 must be the one named.
        WorkerRecord[] waiting = [Worker("w1", 0.1, "all-reduce", 1.5, "w3"), Worker("w2", 0.1, "all-reduce", 1.5, "w1"), Worker("w3", 2.99, "all-reduce", 0.02, "w1")];
        var stall = StallDiagnosis.Diagnose(waiting, Now, 3, silentSeconds: 3, lateSeconds: 0.6);
        Assert.NotNull(stall);
        Assert.Equal(["w3"], stall.Culprits);
        Assert.StartsWith("w3 in all-reduce, waiting on w1 for 3 s (last heartbeat 3 s ago)", stall.Text);
        WorkerRecord[] computing = [Worker("w1", 0.1, "backward", 1.5), Worker("w2", 0.1, "backward", 1.5), Worker("w3", 2.99, "all-reduce", 0.02, "w1")];
        Assert.Equal(["w3"], StallDiagnosis.Diagnose(computing, Now, 3, silentSeconds: 3, lateSeconds: 0.6)!.Culprits);
        // A late report that still holds — w1 has computed for longer than w3 has waited on it — is followed to w1.
        WorkerRecord[] slow = [Worker("w1", 0.1, "backward", 10), Worker("w2", 0.1, "all-reduce", 4, "w1"), Worker("w3", 0.7, "all-reduce", 3.3, "w1")];
        Assert.Equal(["w1"], StallDiagnosis.Diagnose(slow, Now, 3, silentSeconds: 3, lateSeconds: 0.6)!.Culprits);
    }

    [Fact]
    public void Workers_waiting_on_each_other_are_reported_as_a_stuck_ring()
    {
        var stall = StallDiagnosis.Diagnose([Worker("w1", 0.1, "all-reduce", 7, "w2"), Worker("w2", 0.1, "all-reduce", 7, "w1")], Now, 5);
        Assert.NotNull(stall);
        Assert.Empty(stall.Culprits);
        Assert.Contains("the ring is stuck", stall.Text);
    }
}
