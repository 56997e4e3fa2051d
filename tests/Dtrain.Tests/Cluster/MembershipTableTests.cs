using Dtrain.Server;

namespace Dtrain.Tests.Cluster;

/// <summary>The one transition table of worker membership: every allowed transition, and a refused one is a typed error naming the worker.</summary>
public class MembershipTableTests
{
    public static TheoryData<MembershipState, MembershipEvent, MembershipState> Allowed => new()
    {
        { MembershipState.Joining, MembershipEvent.Ready, MembershipState.Idle },
        { MembershipState.Joining, MembershipEvent.ReadyCordoned, MembershipState.Cordoned },
        { MembershipState.Idle, MembershipEvent.Cordon, MembershipState.Cordoned },
        { MembershipState.Idle, MembershipEvent.Reserve, MembershipState.Training },
        { MembershipState.Training, MembershipEvent.Drain, MembershipState.Draining },
        { MembershipState.Training, MembershipEvent.Leave, MembershipState.Draining },
        { MembershipState.Draining, MembershipEvent.Leave, MembershipState.Draining },
        { MembershipState.Training, MembershipEvent.Release, MembershipState.Idle },
        { MembershipState.Draining, MembershipEvent.Release, MembershipState.Idle },
        { MembershipState.Training, MembershipEvent.ReleaseCordoned, MembershipState.Cordoned },
        { MembershipState.Draining, MembershipEvent.ReleaseCordoned, MembershipState.Cordoned },
        { MembershipState.Cordoned, MembershipEvent.Uncordon, MembershipState.Idle },
        { MembershipState.Draining, MembershipEvent.Uncordon, MembershipState.Training },
        { MembershipState.Joining, MembershipEvent.Lose, MembershipState.Lost },
        { MembershipState.Idle, MembershipEvent.Lose, MembershipState.Lost },
        { MembershipState.Training, MembershipEvent.Lose, MembershipState.Lost },
        { MembershipState.Draining, MembershipEvent.Lose, MembershipState.Lost },
        { MembershipState.Cordoned, MembershipEvent.Lose, MembershipState.Lost },
    };

    [Theory]
    [MemberData(nameof(Allowed))]
    public void Every_allowed_transition_leads_where_the_table_says(MembershipState from, MembershipEvent happened, MembershipState to) =>
        Assert.Equal(to, MembershipTable.Next("worker w1", from, happened));

    [Fact]
    public void The_table_holds_exactly_the_allowed_transitions_and_everything_else_is_refused_with_a_typed_error()
    {
        var allowed = Allowed.Select(row => ((MembershipState)row[0], (MembershipEvent)row[1])).ToHashSet();
        Assert.Equal(allowed.Count, MembershipTable.Table.Count);
        foreach (var from in Enum.GetValues<MembershipState>())
        {
            foreach (var happened in Enum.GetValues<MembershipEvent>())
            {
                Assert.Equal(allowed.Contains((from, happened)), MembershipTable.Allows(from, happened));
                if (allowed.Contains((from, happened))) continue;
                var e = Assert.Throws<InvalidTransitionException>(() => MembershipTable.Next("worker w7", from, happened));
                Assert.Equal("worker w7", e.Subject);
                Assert.StartsWith("worker w7: cannot ", e.Message);
            }
        }
        // A lost worker never comes back: it registers anew under another id.
        Assert.DoesNotContain(MembershipTable.Table.Keys, k => k.From == MembershipState.Lost);
    }

    [Fact]
    public void A_refused_transition_names_the_worker_its_state_and_what_was_asked()
    {
        var e = Assert.Throws<InvalidTransitionException>(() => MembershipTable.Next("worker w3", MembershipState.Lost, MembershipEvent.Reserve));
        Assert.Equal("worker w3: cannot be reserved while lost", e.Message);
        Assert.Equal("lost", e.From);
    }

    [Fact]
    public void A_worker_record_changes_state_only_through_the_table()
    {
        var w = new WorkerRecord("w1", "", "http://127.0.0.1:1", Dtrain.Cluster.WorkerCapabilities.Unknown, DateTimeOffset.UnixEpoch);
        Assert.Equal(MembershipState.Joining, w.State);
        Assert.Throws<InvalidTransitionException>(() => w.Apply(MembershipEvent.Reserve));
        Assert.Equal(MembershipState.Joining, w.State);
        w.Apply(MembershipEvent.Ready);
        w.Apply(MembershipEvent.Reserve);
        Assert.Equal(MembershipState.Training, w.State);
        Assert.Equal(Protos.Jobs.WorkerState.Training, w.ToInfo().State);
    }
}
