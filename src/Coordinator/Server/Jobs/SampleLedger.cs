using System.Text.Json;
using System.Text.Json.Serialization;
using Dtrain.Distributed;

namespace Dtrain.Server;

/// <summary>Rows <paramref name="FirstRow"/> .. <paramref name="FirstRow"/> + <paramref name="Rows"/> - 1 of a step's global batch, trained by <paramref name="WorkerId"/>.</summary>
public sealed record RowShare(string WorkerId, int FirstRow, int Rows);

/// <summary>
/// One committed step of the sample ledger: its place in the epoch's sample order, the rows of its global batch, its
/// membership generation and which worker trained which rows (the domain's own type; the proto <c>LedgerStep</c> is
/// built from it at the service edge and in the job store).
/// </summary>
public sealed record LedgerEntry(long Step, long Epoch, long StepInEpoch, int Rows, long Generation, IReadOnlyList<RowShare> Shares)
{
    /// <summary>Value equality, with the shares compared by content.</summary>
    public bool Equals(LedgerEntry? other) =>
        other is not null && Step == other.Step && Epoch == other.Epoch && StepInEpoch == other.StepInEpoch && Rows == other.Rows
        && Generation == other.Generation && Shares.SequenceEqual(other.Shares);

    public override int GetHashCode() => HashCode.Combine(Step, Epoch, Generation, Shares.Count);
}

/// <summary>ledger.jsonl's lines (camelCase, as the protobuf JSON of the same fields).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(LedgerEntry))]
internal sealed partial class LedgerJson : JsonSerializerContext;

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
    private readonly SortedDictionary<long, LedgerEntry> steps = [];

    /// <summary>Called (under the ledger's lock, in order) for every committed step and every roll-back: the coordinator's <see cref="Server.JobStore"/> keeps them.</summary>
    public Action<LedgerEntry>? OnCommit { get; set; }
    public Action<long>? OnRollBack { get; set; }

    /// <summary>Takes back the steps a coordinator's store kept (after a restart), without writing them again.</summary>
    public void Restore(IEnumerable<LedgerEntry> kept)
    {
        lock (gate)
            foreach (var s in kept) steps[s.Step] = s;
    }

    /// <summary>Records step <paramref name="step"/> as committed by <paramref name="members"/> (rank order) under <paramref name="plan"/>'s split; a step is recorded once.</summary>
    public void Commit(long step, ShardPlan plan, long generation, IReadOnlyList<string> members)
    {
        var position = plan.PositionOf(step);
        var entry = new LedgerEntry(step, position.Epoch, position.StepInEpoch, plan.RowsAt(step), generation,
            [.. members.Select((id, rank) =>
            {
                var (start, count) = plan.RangeFor(step, rank);
                return new RowShare(id, start, count);
            })]);
        lock (gate)
        {
            if (!steps.TryAdd(step, entry)) throw new InvalidOperationException($"step {step} committed twice (generation {steps[step].Generation} and {generation})");
            if (file is not null)
            {
                PrivateFiles.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(file))!);
                PrivateFiles.AppendAllText(file, JsonSerializer.Serialize(entry, LedgerJson.Default.LedgerEntry) + "\n");
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

    /// <summary>The committed steps, in order.</summary>
    public IReadOnlyList<LedgerEntry> Snapshot()
    {
        lock (gate) return [.. steps.Values];
    }

    /// <summary>What is wrong with a ledger (empty when every step from <paramref name="from"/> to <paramref name="to"/> appears once and its shares partition its rows).</summary>
    public static IReadOnlyList<string> Check(IEnumerable<LedgerEntry> ledger, long from, long to)
    {
        var problems = new List<string>();
        var seen = new HashSet<long>();
        foreach (var s in ledger)
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
