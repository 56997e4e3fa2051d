using Dtrain.Cluster;
using Dtrain.Server;
using Microsoft.Extensions.Logging.Abstractions;

namespace Dtrain.Tests.Cluster;

/// <summary>Membership bookkeeping: a worker is its id and its registration's token, not the id alone.</summary>
public class WorkerRegistryTests
{
    static WorkerRegistry NewRegistry() => new(new CoordinatorOptions(), TimeProvider.System, NullLogger<WorkerRegistry>.Instance);

    static WorkerRegistration At(string address) => new(address, "", WorkerCapabilities.Unknown with { Cores = 1 });

    [Fact]
    public void A_restarted_coordinator_hands_out_the_same_ids_but_an_old_token_is_not_accepted()
    {
        var before = NewRegistry();
        var old = before.Register(At("http://10.0.0.1:7000"));
        Assert.True(before.Heartbeat(old.Id, old.Token));

        // The coordinator restarts: another worker registers first and gets the same id.
        var after = NewRegistry();
        var other = after.Register(At("http://10.0.0.2:7000"));
        Assert.Equal(old.Id, other.Id);
        Assert.NotEqual(old.Token, other.Token);
        Assert.False(after.Heartbeat(old.Id, old.Token));      // answered "unknown": the old worker registers anew
        Assert.True(after.Heartbeat(other.Id, other.Token));

        // Nor can the old registration's Leave remove the new worker.
        after.Leave(old.Id, old.Token, "shutting down");
        Assert.Equal(other.Address, Assert.Single(after.Snapshot()).Address);
        after.Leave(other.Id, other.Token, "shutting down");
        Assert.Empty(after.Snapshot());
    }

    [Fact]
    public void Leaving_while_training_drains_and_raises_WorkerLeft_with_the_reason()
    {
        var registry = NewRegistry();
        var w = registry.Register(At("http://10.0.0.1:7000"));
        registry.Heartbeat(w.Id, w.Token);
        Assert.NotNull(registry.TryReserve(1, "job-0001"));
        (string Id, string Job, string Reason)? left = null;
        registry.WorkerLeft += (r, reason) => left = (r.Id, r.JobId, reason);
        registry.Leave(w.Id, w.Token, "worker shutting down");
        Assert.Equal((w.Id, "job-0001", "worker shutting down"), left);
        Assert.Equal(MembershipState.Draining, registry.StateOf(w.Id));
        registry.Release("job-0001");
        Assert.Empty(registry.Snapshot());
    }

    [Fact]
    public void Tokens_are_random_per_registration()
    {
        var registry = NewRegistry();
        var tokens = Enumerable.Range(0, 20).Select(i => registry.Register(At($"http://10.0.0.{i}:7000")).Token).ToList();
        Assert.All(tokens, t => Assert.Equal(32, t.Length));
        Assert.Equal(tokens.Count, tokens.Distinct().Count());
    }
}
