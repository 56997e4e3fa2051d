using System.Globalization;
using Dtrain.Protos.Jobs;
using Dtrain.Server;

namespace Dtrain.Cli;

/// <summary>`dtrain status JOB --ledger`: the committed steps by epoch and membership generation, and the exactly-once check.</summary>
public static class LedgerView
{
    public static void Print(LedgerReply ledger, JobInfo job)
    {
        Console.WriteLine("  sample ledger:");
        if (ledger.Steps.Count == 0)
        {
            Console.WriteLine("    no committed steps recorded");
            return;
        }
        foreach (var epoch in ledger.Steps.GroupBy(s => s.Epoch).OrderBy(g => g.Key))
        {
            var steps = epoch.OrderBy(s => s.Step).ToList();
            var samples = steps.Sum(s => (long)s.Rows);
            Console.WriteLine($"    epoch {epoch.Key + 1}: {steps.Count} step(s) committed ({steps[0].Step + 1}-{steps[^1].Step + 1}), {samples.ToString("N0", CultureInfo.InvariantCulture)} samples");
            // Runs of consecutive steps in one generation, with who trained how many rows of each batch (a pipeline replica: its stages' workers joined with '+').
            var i = 0;
            while (i < steps.Count)
            {
                var j = i;
                while (j + 1 < steps.Count && steps[j + 1].Generation == steps[i].Generation && steps[j + 1].Step == steps[j].Step + 1) j++;
                var shares = string.Join(", ", steps[i].Shares.Select(x => $"{x.WorkerId} rows {x.FirstRow}-{x.FirstRow + x.Rows - 1}"));
                Console.WriteLine($"      generation {steps[i].Generation}: steps {steps[i].Step + 1}-{steps[j].Step + 1} on {steps[i].Shares.Sum(x => x.WorkerId.Split('+').Length)} worker(s) ({shares}{(j > i ? ", ..." : "")})");
                i = j + 1;
            }
        }
        var first = ledger.Steps.Min(s => s.Step);
        var problems = SampleLedger.Check(ProtoMapper.FromProto(ledger), first, job.Step);
        Console.WriteLine(problems.Count == 0
            ? $"    every sample of steps {first + 1}-{job.Step} seen exactly once (each step committed once; its rows split among its workers without gap or overlap)"
            : $"    PROBLEMS: {string.Join("; ", problems.Take(10))}");
    }
}
