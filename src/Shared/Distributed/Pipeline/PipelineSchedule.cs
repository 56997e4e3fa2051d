using System.Text;

namespace Dtrain.Distributed.Pipeline;

/// <summary>What a pipeline stage does with one micro-batch.</summary>
public enum PipelineOp
{
    Forward,
    Backward,
}

/// <summary>One entry of a stage's list: run <see cref="Op"/> on micro-batch <see cref="MicroBatch"/>.</summary>
public readonly record struct PipelineAction(int Stage, PipelineOp Op, int MicroBatch)
{
    public override string ToString() => $"{(Op == PipelineOp.Forward ? 'F' : 'B')}{MicroBatch}";
}

/// <summary>
/// A pipeline schedule as data: for each of K stages, the ordered list of (forward | backward, micro-batch) actions
/// its worker executes in one optimizer step over M micro-batches. A stage's forward of micro-batch m needs the
/// previous stage's forward of m (its activation); its backward of m needs its own forward of m and the next stage's
/// backward of m (the activation gradient). Both kinds run every stage's backwards in micro-batch order 0..M-1, so
/// gradients accumulate in the same order and GPipe and 1F1B give bit-identical results.
/// </summary>
public sealed class PipelineSchedule
{
    public const string GPipeKind = "gpipe", OneFOneBKind = "1f1b";
    public static readonly IReadOnlyList<string> Kinds = [GPipeKind, OneFOneBKind];

    public string Kind { get; }
    public int Stages { get; }
    public int MicroBatches { get; }
    /// <summary>Per stage, the actions in execution order.</summary>
    public IReadOnlyList<IReadOnlyList<PipelineAction>> PerStage { get; }

    private PipelineSchedule(string kind, int stages, int microBatches, IReadOnlyList<IReadOnlyList<PipelineAction>> perStage)
    {
        Kind = kind;
        Stages = stages;
        MicroBatches = microBatches;
        PerStage = perStage;
    }

    public static PipelineSchedule Create(string kind, int stages, int microBatches) => kind switch
    {
        GPipeKind => GPipe(stages, microBatches),
        OneFOneBKind => OneFOneB(stages, microBatches),
        _ => throw new ArgumentException($"pipeline schedule \"{kind}\" is not one of: {string.Join(", ", Kinds)}", nameof(kind)),
    };

    /// <summary>GPipe: every forward, then every backward — M micro-batches' activations in flight on every stage.</summary>
    public static PipelineSchedule GPipe(int stages, int microBatches)
    {
        Check(stages, microBatches);
        return new(GPipeKind, stages, microBatches, [.. Enumerable.Range(0, stages).Select(s => (IReadOnlyList<PipelineAction>)
            [.. Enumerable.Range(0, microBatches).Select(m => new PipelineAction(s, PipelineOp.Forward, m)),
             .. Enumerable.Range(0, microBatches).Select(m => new PipelineAction(s, PipelineOp.Backward, m))])]);
    }

    /// <summary>
    /// 1F1B (PipeDream-flush): stage s runs min(K−s−1, M) warm-up forwards, then alternates one forward and one
    /// backward, then drains the remaining backwards — at most K−s micro-batches' activations in flight on stage s.
    /// </summary>
    public static PipelineSchedule OneFOneB(int stages, int microBatches)
    {
        Check(stages, microBatches);
        var perStage = new List<IReadOnlyList<PipelineAction>>();
        for (var s = 0; s < stages; s++)
        {
            var list = new List<PipelineAction>();
            var warmup = Math.Min(stages - s - 1, microBatches);
            for (var m = 0; m < warmup; m++) list.Add(new(s, PipelineOp.Forward, m));
            var steady = microBatches - warmup;
            for (var i = 0; i < steady; i++)
            {
                list.Add(new(s, PipelineOp.Forward, warmup + i));
                list.Add(new(s, PipelineOp.Backward, i));
            }
            for (var m = steady; m < microBatches; m++) list.Add(new(s, PipelineOp.Backward, m));
            perStage.Add(list);
        }
        return new(OneFOneBKind, stages, microBatches, perStage);
    }

    private static void Check(int stages, int microBatches)
    {
        if (stages < 1) throw new ArgumentOutOfRangeException(nameof(stages), stages, "a pipeline needs at least one stage");
        if (microBatches < 1) throw new ArgumentOutOfRangeException(nameof(microBatches), microBatches, "a pipeline step needs at least one micro-batch");
    }

    /// <summary>The most micro-batches whose activations stage <paramref name="stage"/> holds at once (forwarded, not yet backwarded).</summary>
    public int PeakInFlight(int stage)
    {
        int live = 0, peak = 0;
        foreach (var a in PerStage[stage])
        {
            live += a.Op == PipelineOp.Forward ? 1 : -1;
            peak = Math.Max(peak, live);
        }
        return peak;
    }

    /// <summary>
    /// Runs the schedule on an idealised clock (every action one time unit, transfers free): each stage starts its
    /// next action as soon as its inputs exist. Throws when the lists cannot all finish (a schedule that would hang).
    /// </summary>
    public PipelineTimeline Simulate()
    {
        var forwardDone = new int[Stages, MicroBatches];
        var backwardDone = new int[Stages, MicroBatches];
        for (var s = 0; s < Stages; s++)
            for (var m = 0; m < MicroBatches; m++) forwardDone[s, m] = backwardDone[s, m] = -1;
        var next = new int[Stages];
        var grid = new List<PipelineAction?[]>();
        var remaining = PerStage.Sum(l => l.Count);
        for (var t = 0; remaining > 0; t++)
        {
            var row = new PipelineAction?[Stages];
            for (var s = 0; s < Stages; s++)
            {
                if (next[s] >= PerStage[s].Count) continue;
                var a = PerStage[s][next[s]];
                var ready = a.Op == PipelineOp.Forward
                    ? s == 0 || Done(forwardDone[s - 1, a.MicroBatch], t)
                    : Done(forwardDone[s, a.MicroBatch], t) && (s == Stages - 1 || Done(backwardDone[s + 1, a.MicroBatch], t));
                if (!ready) continue;
                row[s] = a;
                (a.Op == PipelineOp.Forward ? forwardDone : backwardDone)[s, a.MicroBatch] = t;
                next[s]++;
                remaining--;
            }
            if (row.All(a => a is null))
                throw new InvalidOperationException($"{Kind} schedule for {Stages} stages × {MicroBatches} micro-batches cannot proceed at time {t}: " +
                    string.Join("; ", Enumerable.Range(0, Stages).Where(s => next[s] < PerStage[s].Count).Select(s => $"stage {s} waits to run {PerStage[s][next[s]]}")));
            grid.Add(row);
        }
        return new PipelineTimeline(this, grid);

        static bool Done(int at, int now) => at >= 0 && at < now;
    }
}

/// <summary>A simulated run of a schedule: what each stage does at each time step (null = idle, the bubble).</summary>
public sealed class PipelineTimeline(PipelineSchedule schedule, IReadOnlyList<PipelineAction?[]> grid)
{
    public PipelineSchedule Schedule { get; } = schedule;
    public IReadOnlyList<PipelineAction?[]> Grid { get; } = grid;
    public int Length => Grid.Count;

    /// <summary>Share of stage-time slots that are idle.</summary>
    public double BubbleFraction => 1.0 - (double)Grid.Sum(r => r.Count(a => a is not null)) / (Length * Schedule.Stages);

    /// <summary>The grid as text: a row per time step, a column per stage ("F3" forward of micro-batch 3, "B3" backward, "." idle).</summary>
    public string Render()
    {
        var width = Math.Max(4, $"B{Schedule.MicroBatches - 1}".Length + 1);
        var sb = new StringBuilder();
        sb.Append("time".PadRight(6));
        for (var s = 0; s < Schedule.Stages; s++) sb.Append($"s{s}".PadRight(width));
        sb.AppendLine();
        for (var t = 0; t < Length; t++)
        {
            sb.Append(t.ToString(System.Globalization.CultureInfo.InvariantCulture).PadRight(6));
            foreach (var a in Grid[t]) sb.Append((a?.ToString() ?? ".").PadRight(width));
            sb.AppendLine();
        }
        return sb.ToString();
    }
}
