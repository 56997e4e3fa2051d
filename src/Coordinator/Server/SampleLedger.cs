using Dtrain.Distributed;
using Dtrain.Protos.Jobs;

namespace Dtrain.Server;

/// <summary>
/// Which rows of the epoch's sample order every committed step used, on which workers, in which membership
/// generation. A step's global batch is fixed by the seed and its place in the epoch; the ledger shows that across
/// any number of resizes every committed step appears once and its rows are split among its workers without gap or
/// overlap — so every sample is seen exactly once per epoch. Kept in memory and appended to <c>ledger.jsonl</c> in
/// the job's directory.
/// </summary>
public sealed class SampleLedger(string? file = null)
{
    private readonly Lock gate = new();
    private readonly SortedDictionary<long, LedgerStep> steps = [];

    /// <summary>Called (under the ledger's lock, in order) for every committed step and every roll-back: the coordinator's <see cref="Server.JobStore"/> keeps them.</summary>
    public Action<LedgerStep>? OnCommit { get; set; }
    public Action<long>? OnRollBack { get; set; }

    /// <summary>Takes back the steps a coordinator's store kept (after a restart), without writing them again.</summary>
    public void Restore(IEnumerable<LedgerStep> kept)
    {
        lock (gate)
            foreach (var s in kept) steps[s.Step] = s;
    }

    /// <summary>Records step <paramref name="step"/> as committed by <paramref name="members"/> (rank order) under <paramref name="plan"/>'s split; a step is recorded once.</summary>
    public void Commit(long step, ShardPlan plan, long generation, IReadOnlyList<string> members)
    {
        var position = plan.PositionOf(step);
        var entry = new LedgerStep { Step = step, Epoch = position.Epoch, StepInEpoch = position.StepInEpoch, Rows = plan.RowsAt(step), Generation = generation };
        for (var rank = 0; rank < members.Count; rank++)
        {
            var (start, count) = plan.RangeFor(step, rank);
            entry.Shares.Add(new LedgerShare { WorkerId = members[rank], FirstRow = start, Rows = count });
        }
        lock (gate)
        {
            if (!steps.TryAdd(step, entry)) throw new InvalidOperationException($"step {step} committed twice (generation {steps[step].Generation} and {generation})");
            if (file is not null)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(file))!);
                File.AppendAllText(file, Google.Protobuf.JsonFormatter.Default.Format(entry) + "\n");
            }
            OnCommit?.Invoke(entry);
        }
    }

    /// <summary>A restart from a checkpoint at <paramref name="step"/> undoes the steps after it: they are trained again.</summary>
    public void RollBack(long step)
    {
        lock (gate)
        {
            foreach (var k in steps.Keys.Where(k => k >= step).ToList()) steps.Remove(k);
            if (file is not null && File.Exists(file)) File.AppendAllText(file, $"{{\"rollbackTo\": {step}}}\n");
            OnRollBack?.Invoke(step);
        }
    }

    public bool Contains(long step)
    {
        lock (gate) return steps.ContainsKey(step);
    }

    public LedgerReply Snapshot()
    {
        var reply = new LedgerReply();
        lock (gate) reply.Steps.AddRange(steps.Values.Select(s => s.Clone()));
        return reply;
    }

    /// <summary>What is wrong with a ledger (empty when every step from <paramref name="from"/> to <paramref name="to"/> appears once and its shares partition its rows).</summary>
    public static IReadOnlyList<string> Check(LedgerReply ledger, long from, long to)
    {
        var problems = new List<string>();
        var seen = new HashSet<long>();
        foreach (var s in ledger.Steps)
        {
            if (!seen.Add(s.Step)) problems.Add($"step {s.Step} appears twice");
            var next = 0;
            foreach (var share in s.Shares.OrderBy(x => x.FirstRow))
            {
                if (share.Rows == 0) continue;
                if (share.FirstRow != next) problems.Add($"step {s.Step}: rows {next}..{share.FirstRow - 1} {(share.FirstRow > next ? "trained by no worker" : "trained twice")}");
                next = share.FirstRow + share.Rows;
            }
            if (next != s.Rows) problems.Add($"step {s.Step}: {next} of {s.Rows} rows trained");
        }
        for (var step = from; step < to; step++)
            if (!seen.Contains(step)) problems.Add($"step {step} not committed");
        return problems;
    }
}
