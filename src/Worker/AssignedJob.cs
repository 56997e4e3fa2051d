using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;
using Dtrain.Rpc;

namespace Dtrain.Worker;

/// <summary>
/// The job this worker is assigned, whatever its kind: what it holds of it (<see cref="Work"/>: a whole replica or a
/// pipeline stage), its shard of the data, its place in the ring and the gate its steps pass one at a time.
/// </summary>
public sealed class AssignedJob : IAsyncDisposable
{
    private readonly Dictionary<long, ShardRows> steps = [];
    private IAsyncDisposable? ring;
    /// <summary>Rings of earlier generations still closing (see <see cref="AbortAsync"/>); the job's disposal waits for them.</summary>
    private readonly List<Task> closing = [];

    public string JobId { get; }
    /// <summary>The worker ids of the job's current generation (rank order): the peers that may take this replica's state.</summary>
    public IReadOnlyList<string> PeerIds { get; private set; }
    /// <summary>The membership generation this replica works in; requests of another one are refused.</summary>
    public long Generation { get; private set; }
    public int Rank { get; private set; }
    public int WorldSize { get; private set; }
    public JobSpec Spec { get; }
    /// <summary>The task of <see cref="Spec"/>.</summary>
    public ITrainingTask TrainingTask { get; }
    public ITokenizer Tokenizer { get; }
    public LabelSet Labels { get; }
    /// <summary>What this worker holds of the job: a whole replica or a pipeline stage.</summary>
    public IWorkerJob Work { get; }

    /// <summary>The work as a <typeparamref name="T"/>, or the refusal "job …: <paramref name="refusal"/>" (InvalidOperationException).</summary>
    public T Require<T>(string refusal) where T : class, IWorkerJob =>
        Work as T ?? throw new InvalidOperationException($"job {JobId}: {refusal}");
    /// <summary>The one thread all of this replica's torch work runs on.</summary>
    public TorchThread Torch { get; }
    public List<int> ValidationTokens { get; } = [];
    /// <summary>A dataset job: the rows this worker reads itself (null when they are sent).</summary>
    public DatasetRows? Dataset { get; private set; }
    /// <summary>A dataset job: this replica evaluates on the dataset's validation split (read by it).</summary>
    public bool ValidationFromDataset { get; private set; }
    public List<int[]> ValidationSequences { get; } = [];
    public List<int> ValidationLabels { get; } = [];
    /// <summary>
    /// Set when the validation tokens or examples held are only this rank's part of the split: the split's whole length
    /// (tokens, or examples), the part starting at <see cref="ValidationOffset"/>; null: they are the whole split.
    /// </summary>
    public long? ValidationTotal { get; private set; }
    public long ValidationOffset { get; private set; }
    /// <summary>Cancelled when the job is released: unblocks a collective waiting for a dead peer.</summary>
    public CancellationTokenSource Cancel { get; } = new();
    /// <summary>Cancelled when the steps of this generation are abandoned (<see cref="AbortAsync"/>); replaced by the next generation's.</summary>
    public CancellationToken StepsCancelled => stepCancel.Token;
    private volatile CancellationTokenSource stepCancel = new();
    /// <summary>One step at a time: the replica and torch are not re-entrant.</summary>
    public SemaphoreSlim Gate { get; } = new(1, 1);
    public long LastStep { get; private set; }
    /// <summary>The first step this job runs: 0, or a resumed job's checkpoint step.</summary>
    public long StartStep { get; }
    /// <summary>Set when the worker drains (shuts down): no further step starts.</summary>
    public bool Draining
    {
        get => draining;
        set => draining = value;
    }
    private volatile bool draining;
    private TaskCompletionSource turn = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Takes <see cref="Gate"/> for step <paramref name="step"/>. The coordinator sends step k+1 while step k runs,
    /// and the two requests may arrive in either order: k+1 waits for k to end; anything else is refused.
    /// </summary>
    public async Task EnterStepAsync(long step, CancellationToken cancel)
    {
        while (true)
        {
            await Gate.WaitAsync(cancel).ConfigureAwait(false);
            if (Draining)
            {
                Gate.Release();
                throw new WorkStoppedException($"job {JobId}: this worker is shutting down (drained after step {LastStep + 1})");
            }
            if (step == LastStep + 1) return;
            var next = turn.Task;
            var last = LastStep;
            Gate.Release();
            if (step != last + 2)
                throw new InvalidOperationException($"job {JobId}: step {step} requested after step {last}");
            await next.WaitAsync(cancel).ConfigureAwait(false);
        }
    }

    /// <summary>Ends the step holding <see cref="Gate"/> (<paramref name="completed"/>: it succeeded) and wakes a step waiting its turn.</summary>
    public void ExitStep(long step, bool completed)
    {
        if (completed) LastStep = step;
        var woken = turn;
        turn = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        woken.SetResult();
        Gate.Release();
    }

    public AssignedJob(Assignment request, JobSpec spec, ITokenizer tokenizer, LabelSet labels, IWorkerJob work, IAsyncDisposable? ring, TorchThread torch)
    {
        Work = work;
        Torch = torch;
        JobId = request.JobId;
        Generation = request.Generation;
        Rank = request.Rank;
        StartStep = request.StartStep;
        PeerIds = [.. request.Peers.OrderBy(p => p.Rank).Select(p => p.WorkerId)];
        LastStep = request.StartStep - 1;
        WorldSize = request.World;
        Spec = spec;
        TrainingTask = TrainingTasks.For(spec);
        Tokenizer = tokenizer;
        Labels = labels;
        this.ring = ring;
    }

    /// <summary>
    /// Abandons this generation's steps: the one running stops (before its optimizer step, unless it already took
    /// it: a step is applied whole or not at all) and queued ones are refused; then lets the ring close in the
    /// background (a ring with a hung peer may take seconds to close: its streams to that peer never finish; the next
    /// generation's ring is another one, and fencing keeps the two apart). Returns with
    /// <see cref="Gate"/> held, so nothing runs until <see cref="ReconfigureAsync"/> or <see cref="EndAbort"/>.
    /// </summary>
    public async Task AbortAsync(long generation, TimeSpan timeout)
    {
        if (generation <= Generation) throw new StaleGenerationException($"job {JobId}: abort for generation {generation}, but this worker is already at generation {Generation}");
        await stepCancel.CancelAsync().ConfigureAwait(false);
        if (!await Gate.WaitAsync(timeout).ConfigureAwait(false))
            throw new TimeoutException($"job {JobId}: step {LastStep + 1} did not stop within {timeout.TotalSeconds:F0}s");
        if (ring is not null)
        {
            var old = ring;
            ring = null;
            lock (closing) closing.Add(Task.Run(async () => await old.DisposeAsync().ConfigureAwait(false)));
        }
    }

    /// <summary>Ends an abort without a new ring (the gate is released; steps stay refused until the next Reconfigure).</summary>
    public void EndAbort() => Gate.Release();

    /// <summary>
    /// Enters generation <paramref name="generation"/> as <paramref name="rank"/> of <paramref name="world"/> over <paramref name="newRing"/>, at step
    /// <paramref name="nextStep"/>, with no shard (it is sent again); its work joins the new ring (<see cref="IWorkerJob.JoinRing"/>, on the torch thread).
    /// </summary>
    public async Task ReconfigureAsync(long generation, int rank, int world, RingConnection newRing, long nextStep, IReadOnlyList<string> peerIds)
    {
        PeerIds = peerIds;
        Generation = generation;
        Rank = rank;
        WorldSize = world;
        ring = newRing;
        LastStep = nextStep - 1;
        lock (steps) steps.Clear();
        Dataset?.Clear();
        ValidationFromDataset = false;
        ValidationTokens.Clear();
        ValidationSequences.Clear();
        ValidationLabels.Clear();
        ValidationTotal = null;
        ValidationOffset = 0;
        stepCancel = new CancellationTokenSource();
        await Torch.RunAsync(() => Work.JoinRing(newRing.Reducer)).ConfigureAwait(false);
    }

    /// <summary>A replica whose state was replaced (from a peer) stands at <paramref name="nextStep"/>.</summary>
    public void StandAt(long nextStep) => LastStep = nextStep - 1;

    public int StepsReceived
    {
        get { lock (steps) return steps.Count; }
    }

    /// <summary>A dataset job: the worker reads its rows from <paramref name="rows"/> (owned by the job from now on).</summary>
    public void UseDataset(DatasetRows rows) => Dataset = rows;

    /// <summary>
    /// Adds a chunk of the shard after checking every token id against the vocabulary (an out-of-range id would abort
    /// libtorch); a dataset job's planned steps are checked when read, and the first to run is read at once in the background.
    /// </summary>
    public void Add(ShardSlice chunk)
    {
        var vocab = Tokenizer.VocabSize;
        foreach (var s in chunk.Steps)
        {
            if (s.Planned)
            {
                if (Dataset is null) throw new ArgumentException($"step {s.Step}: a planned step (rows to read from a dataset) for a job assigned without a dataset");
                if (s.RowStart < 0 || s.Rows < 0 || s.Count < 0) throw new ArgumentException($"step {s.Step}: rows {s.RowStart} + {s.Rows} (count {s.Count}) is not a row range");
            }
            else CheckStep(s, vocab);
            lock (steps) steps[s.Step] = s;
        }
        if (chunk.DatasetValidation)
        {
            if (Dataset is null) throw new ArgumentException("the dataset's validation split for a job assigned without a dataset");
            ValidationFromDataset = true;
        }
        PrefetchFrom(LastStep + 1);
        if (chunk.ValidationTotal is { } total)
        {
            if (total < 0 || chunk.ValidationOffset < 0 || chunk.ValidationOffset > total)
                throw new ArgumentException($"validation part from item {chunk.ValidationOffset} of {total} is not a part of a split");
            if (ValidationTokens.Count > 0 || ValidationSequences.Count > 0)
                throw new ArgumentException("the validation part's place in the split after some of its data");
            ValidationTotal = total;
            ValidationOffset = chunk.ValidationOffset;
        }
        foreach (var t in chunk.ValidationTokens) CheckToken(t, vocab, "validation token");
        ValidationTokens.AddRange(chunk.ValidationTokens);
        foreach (var ex in chunk.ValidationExamples)
        {
            foreach (var t in ex.Tokens) CheckToken(t, vocab, "validation token");
            if (ex.Label < 0 || ex.Label >= Labels.Count) throw new ArgumentException($"validation label id {ex.Label} outside [0, {Labels.Count})");
            if (ex.Tokens.Length == 0) throw new ArgumentException("validation example without tokens");
            ValidationSequences.Add([.. ex.Tokens]);
            ValidationLabels.Add(ex.Label);
        }
        if (ValidationTotal is { } whole && ValidationOffset + Math.Max(ValidationTokens.Count, ValidationSequences.Count) > whole)
            throw new ArgumentException($"validation part from item {ValidationOffset} holds more than the split's {whole}");
    }

    /// <summary>
    /// The validation split sent to this replica, as its evaluation reads it: the whole split, or this rank's part read
    /// by the whole split's positions (so its streams or batches are cut as one process cuts them).
    /// </summary>
    public PreparedData SentValidation()
    {
        var data = new PreparedData
        {
            Tokenizer = Tokenizer, Labels = Labels,
            ValidationTokens = [.. ValidationTokens], ValidationSequences = ValidationSequences, ValidationLabels = ValidationLabels,
        };
        if (ValidationTotal is not { } total) return data;
        return TrainingTask.HasLabels
            ? new PreparedData { Tokenizer = Tokenizer, Labels = Labels, ValidationRecords = new PartRecordSource(ValidationSequences, ValidationLabels, ValidationOffset, total) }
            : new PreparedData { Tokenizer = Tokenizer, Labels = Labels, ValidationStream = new PartTokenSequence(data.ValidationTokens, ValidationOffset, total) };
    }

    /// <summary>The validation split's length sent for (tokens of a language model): the whole split's, not only the part held.</summary>
    public long ValidationLength => ValidationTotal ?? ValidationTokens.Count;

    /// <summary>
    /// The micro-batch of step <paramref name="step"/>, or null when this rank has no rows then; removed once taken. A
    /// dataset job's rows are awaited (read in the background) without blocking a thread.
    /// </summary>
    public async Task<ShardRows?> TakeAsync(long step, CancellationToken cancel)
    {
        ShardRows? s;
        lock (steps)
        {
            if (!steps.Remove(step, out s)) return null;
        }
        if (s.Planned && Dataset is { } dataset)
        {
            // The next step's rows are read while this one runs.
            PrefetchFrom(step + 1);
            s = s with { Read = await dataset.TakeAsync(s, cancel).ConfigureAwait(false) };
        }
        return s;
    }

    /// <summary>A dataset job: starts reading planned step <paramref name="step"/>'s rows in the background when it is held.</summary>
    private void PrefetchFrom(long step)
    {
        if (Dataset is not { } dataset) return;
        ShardRows? s;
        lock (steps) steps.TryGetValue(step, out s);
        if (s is not null) dataset.Prefetch(s);
    }

    /// <summary>The rows of step <paramref name="s"/> (with their lengths when <paramref name="lengths"/>: a classifier's), or null when there are none.</summary>
    public static BatchRows? ToRows(ShardRows? s, bool lengths) =>
        s is null || s.Rows == 0 ? null : s.Read ?? AsRows(s, lengths);

    private static BatchRows AsRows(ShardRows s, bool lengths) =>
        new(s.Rows, s.Width,
            s.Inputs.Select(v => (long)v).ToArray(),
            s.Targets.Select(v => (long)v).ToArray(),
            lengths ? (s.Lengths ?? []).Select(v => (long)v).ToArray() : null,
            s.Count);

    /// <summary>Checks step <paramref name="s"/> as the task does (<see cref="ITrainingTask.CheckRows"/>), even when it has no rows.</summary>
    private void CheckStep(ShardRows s, int vocab) =>
        TrainingTask.CheckRows(AsRows(s, TrainingTask.HasLabels), vocab, Labels.Count, $"step {s.Step}");

    private static void CheckToken(int id, int vocab, string what)
    {
        if ((uint)id >= (uint)vocab) throw new ArgumentException($"{what} id {id} outside the vocabulary [0, {vocab})");
    }

    public async ValueTask DisposeAsync()
    {
        await Cancel.CancelAsync().ConfigureAwait(false);
        await Gate.WaitAsync().ConfigureAwait(false);
        try
        {
            await stepCancel.CancelAsync().ConfigureAwait(false);
            if (ring is not null) await ring.DisposeAsync().ConfigureAwait(false);
            Task[] old;
            lock (closing) old = [.. closing];
            // Earlier generations' rings were abandoned: how they closed does not matter any more.
            await Task.WhenAll(old).ContinueWith(t => _ = t.Exception, TaskScheduler.Default).ConfigureAwait(false);
            await Work.ReleaseAsync(Torch).ConfigureAwait(false);
            Torch.Dispose();
            Dataset?.Dispose();
        }
        finally
        {
            Gate.Release();
            Cancel.Dispose();
            stepCancel.Dispose();
        }
    }
}
