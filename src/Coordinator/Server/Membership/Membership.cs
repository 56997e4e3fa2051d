using System.Collections.Frozen;

namespace Dtrain.Server;

/// <summary>Where a registered worker stands in the coordinator's membership (the domain's own type; the proto <c>WorkerState</c> is built from it at the service edge).</summary>
public enum MembershipState
{
    /// <summary>Registered, no heartbeat yet.</summary>
    Joining,
    /// <summary>Heart-beating and free for a job.</summary>
    Idle,
    /// <summary>Reserved for (or running) a job.</summary>
    Training,
    /// <summary>Leaves its job at the next step boundary: the process shuts down, or an admin drained it.</summary>
    Draining,
    /// <summary>Heart-beating but takes no new job (an admin's cordon or drain).</summary>
    Cordoned,
    /// <summary>No heartbeat for Coordinator:WorkerTimeoutSeconds, unreachable, or replaced: never given work again (a live process registers anew).</summary>
    Lost,
}

/// <summary>What happens to a worker: each is one named transition of <see cref="MembershipTable"/>.</summary>
public enum MembershipEvent
{
    /// <summary>Its first heartbeat (not cordoned).</summary>
    Ready,
    /// <summary>Its first heartbeat, cordoned before it registered.</summary>
    ReadyCordoned,
    /// <summary>An admin cordons an idle worker.</summary>
    Cordon,
    /// <summary>An admin drains a worker in a job.</summary>
    Drain,
    /// <summary>An admin uncordons it (a drain not yet carried out is called off).</summary>
    Uncordon,
    /// <summary>The scheduler or an elastic job reserves it.</summary>
    Reserve,
    /// <summary>Its process shuts down while in a job: it leaves at the step boundary.</summary>
    Leave,
    /// <summary>Its job ends or lets it go, and it is not cordoned.</summary>
    Release,
    /// <summary>Its job ends or lets it go, and it is cordoned.</summary>
    ReleaseCordoned,
    /// <summary>No heartbeat in time, unreachable, or replaced by a registration of the same name.</summary>
    Lose,
}

/// <summary>A transition the table does not allow: the worker, where it stands and what was asked.</summary>
public sealed class InvalidTransitionException(string subject, string from, string happened)
    : InvalidOperationException($"{subject}: cannot {happened} while {from}")
{
    public string Subject { get; } = subject;
    public string From { get; } = from;
    public string Happened { get; } = happened;
}

/// <summary>The one transition table of worker membership: every state change of a worker goes through <see cref="Next"/>.</summary>
public static class MembershipTable
{
    public static readonly FrozenDictionary<(MembershipState From, MembershipEvent Event), MembershipState> Table = new Dictionary<(MembershipState, MembershipEvent), MembershipState>
    {
        [(MembershipState.Joining, MembershipEvent.Ready)] = MembershipState.Idle,
        [(MembershipState.Joining, MembershipEvent.ReadyCordoned)] = MembershipState.Cordoned,
        [(MembershipState.Idle, MembershipEvent.Cordon)] = MembershipState.Cordoned,
        [(MembershipState.Idle, MembershipEvent.Reserve)] = MembershipState.Training,
        [(MembershipState.Training, MembershipEvent.Drain)] = MembershipState.Draining,
        [(MembershipState.Training, MembershipEvent.Leave)] = MembershipState.Draining,
        [(MembershipState.Draining, MembershipEvent.Leave)] = MembershipState.Draining,
        [(MembershipState.Training, MembershipEvent.Release)] = MembershipState.Idle,
        [(MembershipState.Draining, MembershipEvent.Release)] = MembershipState.Idle,
        [(MembershipState.Training, MembershipEvent.ReleaseCordoned)] = MembershipState.Cordoned,
        [(MembershipState.Draining, MembershipEvent.ReleaseCordoned)] = MembershipState.Cordoned,
        [(MembershipState.Cordoned, MembershipEvent.Uncordon)] = MembershipState.Idle,
        [(MembershipState.Draining, MembershipEvent.Uncordon)] = MembershipState.Training,
        [(MembershipState.Joining, MembershipEvent.Lose)] = MembershipState.Lost,
        [(MembershipState.Idle, MembershipEvent.Lose)] = MembershipState.Lost,
        [(MembershipState.Training, MembershipEvent.Lose)] = MembershipState.Lost,
        [(MembershipState.Draining, MembershipEvent.Lose)] = MembershipState.Lost,
        [(MembershipState.Cordoned, MembershipEvent.Lose)] = MembershipState.Lost,
    }.ToFrozenDictionary();

    /// <summary>Whether <paramref name="happened"/> may happen to a worker in <paramref name="from"/>.</summary>
    public static bool Allows(MembershipState from, MembershipEvent happened) => Table.ContainsKey((from, happened));

    /// <summary>The state after <paramref name="happened"/>; <see cref="InvalidTransitionException"/> naming <paramref name="subject"/> when the table does not allow it.</summary>
    public static MembershipState Next(string subject, MembershipState from, MembershipEvent happened) =>
        Table.TryGetValue((from, happened), out var to) ? to : throw new InvalidTransitionException(subject, Describe(from), Describe(happened));

    public static string Describe(MembershipState state) => state.ToString().ToLowerInvariant();

    public static string Describe(MembershipEvent happened) => happened switch
    {
        MembershipEvent.ReadyCordoned => "become ready (cordoned)",
        MembershipEvent.ReleaseCordoned => "be released (cordoned)",
        MembershipEvent.Lose => "be lost",
        MembershipEvent.Reserve => "be reserved",
        MembershipEvent.Release => "be released",
        MembershipEvent.Ready => "become ready",
        _ => happened.ToString().ToLowerInvariant(),
    };
}
