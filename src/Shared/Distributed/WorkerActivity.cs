using System.Diagnostics;
using System.Globalization;
using Dtrain.Collective;

namespace Dtrain.Distributed;

/// <summary>The phases a worker reports with its heartbeats (<see cref="WorkerActivity"/>).</summary>
public static class ActivityPhases
{
    public const string Idle = "idle";
    /// <summary>Receiving an assignment, building the model, joining the ring, loading the shard.</summary>
    public const string Loading = "loading";
    /// <summary>Between steps: waiting for the coordinator's next step (its rows are pushed with the shard).</summary>
    public const string WaitingForData = "waiting for data";
    public const string Forward = "forward";
    public const string Backward = "backward";
    public const string AllReduce = "all-reduce";
    public const string Optimizer = "optimizer";
    public const string Evaluation = "evaluation";
    public const string CheckpointTransfer = "checkpoint transfer";
    /// <summary>A pipeline stage waiting for a neighbouring stage's activation or gradient.</summary>
    public const string PipelineReceive = "pipeline receive";

    /// <summary>Phases in which a worker waits for another one (the one it waits on is the laggard's candidate).</summary>
    public static bool IsWaiting(string phase) => phase is AllReduce or PipelineReceive;

    /// <summary>Every phase, for metrics (one series each).</summary>
    public static readonly IReadOnlyList<string> All = [Idle, Loading, WaitingForData, Forward, Backward, AllReduce, Optimizer, Evaluation, CheckpointTransfer, PipelineReceive];
}

/// <summary>
/// A worker's live phase (idle, forward, backward, all-reduce piece k of n waiting on a peer, ...), the step it works
/// on and since when: set by the worker's runtime, its replica (on the torch thread) and the ring's progress observer;
/// read by the heartbeat loop, which runs on its own timer. Thread-safe; cheap enough to set per micro-batch or piece.
/// </summary>
public sealed class WorkerActivity
{
    private readonly Lock gate = new();
    private string phase = ActivityPhases.Idle;
    private string detail = "";
    private long step;
    private long since = Stopwatch.GetTimestamp();
    private string waitingOn = "";
    private string jobId = "";
    private string subPhase = "";
    private int piece;
    private int pieces;
    private string transport = "";

    /// <summary>Called (outside the lock) with the new phase each time the phase changes (metrics).</summary>
    public event Action<string>? PhaseChanged;

    /// <summary>
    /// Enters <paramref name="newPhase"/> (the clock restarts only when the phase changes) with <paramref name="newDetail"/>;
    /// <paramref name="newStep"/>: the step worked on (from 1), unchanged when null.
    /// </summary>
    public void Enter(string newPhase, string newDetail = "", long? newStep = null, string newWaitingOn = "") =>
        Move(null, newPhase, newDetail, newStep, newWaitingOn);

    /// <summary>
    /// <see cref="Enter"/>, only while <paramref name="job"/> is still this worker's job (checked under the same lock
    /// <see cref="Job"/> takes): a step that ends after its job was released must not leave a released, idle worker
    /// reporting a phase of that job.
    /// </summary>
    public void EnterFor(string job, string newPhase, string newDetail = "") => Move(job, newPhase, newDetail, null, "");

    /// <summary>The phase change of <see cref="Enter"/> and <see cref="EnterFor"/>; nothing when <paramref name="onlyFor"/> is given and is not the current job.</summary>
    private void Move(string? onlyFor, string newPhase, string newDetail, long? newStep, string newWaitingOn)
    {
        bool changed;
        lock (gate)
        {
            if (onlyFor is not null && jobId != onlyFor) return;
            changed = phase != newPhase;
            if (changed) since = Stopwatch.GetTimestamp();
            phase = newPhase;
            detail = newDetail;
            waitingOn = newWaitingOn;
            subPhase = "";
            piece = pieces = 0;
            if (newStep is { } s) step = s;
        }
        if (changed) PhaseChanged?.Invoke(newPhase);
    }

    /// <summary>A new job (or none): its id and the ring transport it uses; back to <see cref="ActivityPhases.Idle"/> when <paramref name="job"/> is "".</summary>
    public void Job(string job, string ringTransport = "")
    {
        lock (gate)
        {
            jobId = job;
            transport = ringTransport;
            if (job == "") step = 0;
        }
        if (job == "") Enter(ActivityPhases.Idle);
    }

    /// <summary>All-reduce progress: waiting for <paramref name="k"/> of <paramref name="n"/> pieces from <paramref name="peer"/>, in <paramref name="sub"/> (reduce-scatter / all-gather).</summary>
    public void AllReduce(string sub, int ringStep, int ringSteps, int k, int n, string peer)
    {
        bool changed;
        lock (gate)
        {
            changed = phase != ActivityPhases.AllReduce;
            if (changed) since = Stopwatch.GetTimestamp();
            phase = ActivityPhases.AllReduce;
            subPhase = sub;
            piece = k;
            pieces = n;
            waitingOn = peer;
            detail = string.Create(CultureInfo.InvariantCulture, $"{sub} step {ringStep}/{ringSteps} piece {k}/{n}");
        }
        if (changed) PhaseChanged?.Invoke(ActivityPhases.AllReduce);
    }

    public string Phase
    {
        get { lock (gate) return phase; }
    }

    public ActivitySnapshot Snapshot()
    {
        lock (gate) return new ActivitySnapshot(phase, detail, step, Stopwatch.GetElapsedTime(since), waitingOn, jobId, subPhase, piece, pieces, transport);
    }

    /// <summary>An <see cref="IRingProgress"/> that reports into this activity, naming ranks by <paramref name="workerIds"/> (in rank order).</summary>
    public IRingProgress RingObserver(IReadOnlyList<string> workerIds) => new RingObserver(this, workerIds);

    /// <summary>"all-reduce reduce-scatter step 1/2 piece 3/8, waiting on w3" — a phase and its detail in one phrase.</summary>
    public static string Describe(string phase, string detail, string waitingOn) =>
        phase + (detail == "" ? "" : " " + detail) + (waitingOn == "" ? "" : $", waiting on {waitingOn}");
}

internal sealed class RingObserver(WorkerActivity activity, IReadOnlyList<string> workerIds) : IRingProgress
{
    public void Waiting(long operation, int phase, int ringStep, int ringSteps, int piece, int pieces, int peerRank) =>
        activity.AllReduce(RingAllReduce.PhaseName(phase), ringStep, ringSteps, piece, pieces, peerRank >= 0 && peerRank < workerIds.Count ? workerIds[peerRank] : $"rank {peerRank}");

    public void Done(long operation)
    {
    }
}
