using System.Threading.Channels;
using Dtrain.Data;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Server;

/// <summary>
/// One job: its spec, its state and the history of its events, fanned out to watchers. Its state changes only through
/// <see cref="Transition"/> (the table of <see cref="JobLifecycle"/>); <see cref="Update"/> changes the rest of its record.
/// </summary>
public sealed class JobRecord(string id, JobSpec spec, string dir, int workersRequested, DateTimeOffset submitted, string owner = "")
{
    private readonly Lock gate = new();
    private readonly List<JobNotice> history = [];
    private readonly List<Channel<JobNotice>> watchers = [];
    // Step and evaluation events: numbered, and kept in the store (in memory only when the record has none).
    private readonly List<JobNotice> unstored = [];
    private long eventSeq;
    private const int MaxHistory = 2000;

    public string Id { get; } = id;
    public JobSpec Spec { get; } = spec;
    public string Dir { get; } = dir;
    public CancellationTokenSource Cancel { get; } = new();
    /// <summary>The checkpoint a resumed job starts from; null for a job that starts from its seed (set again when the job restarts from its own checkpoint).</summary>
    public ResumePoint? Resume { get; set; }
    /// <summary>Which rows every committed step used, on which workers (data-parallel jobs).</summary>
    public SampleLedger Ledger { get; } = new(Path.Combine(dir, "ledger.jsonl"));
    /// <summary>How the job's data files are read (size limit, quoting in messages, progress); set at submit.</summary>
    public DataReadLimits DataLimits { get; init; } = DataReadLimits.Local;
    /// <summary>
    /// The job's data files as this coordinator stores them → as the submitter named them in the spec (uploads and the
    /// files of a resumed job; set at submit and again when a restarted coordinator takes the job back): messages about a
    /// file name it as the user wrote it.
    /// </summary>
    public IReadOnlyDictionary<string, string> DataNames { get; init; } = new Dictionary<string, string>();

    /// <summary>
    /// The spec as its submitter gave it: data files by the names they gave (not where this coordinator stores them),
    /// the output as they wrote it; the rest is <see cref="Spec"/>'s. What clients see (`/api/jobs/J`).
    /// </summary>
    public JobSpec SpecAsSubmitted
    {
        get => WithNamesOf(submittedSpec);
        init => submittedSpec = value;
    }
    private JobSpec? submittedSpec;

    /// <summary>
    /// <see cref="SpecAsSubmitted"/> with its relative data paths resolved on the submitting machine (as `dtrain train`
    /// records them): what workers get and what the job's checkpoints hold, so `dtrain eval MODEL` finds the data where
    /// the user has it, and names it as theirs where it is not — never a path on this coordinator.
    /// </summary>
    public JobSpec SpecOnClient
    {
        get => WithNamesOf(clientSpec ?? submittedSpec);
        init => clientSpec = value;
    }
    private JobSpec? clientSpec;

    /// <summary><see cref="Spec"/> with the data files and output of <paramref name="names"/> (null: as it is).</summary>
    private JobSpec WithNamesOf(JobSpec? names) =>
        names is null ? Spec : Spec with { Data = Spec.Data with { Train = names.Data.Train, Validation = names.Data.Validation }, Output = names.Output };

    /// <summary>
    /// <paramref name="text"/> as a client may see it: every stored data file's path replaced by the name its submitter
    /// gave it (see <see cref="DataNames"/>), and any other path under the coordinator's data directory made relative
    /// to it (<see cref="ServerPaths.Hide"/>).
    /// </summary>
    public string AsSubmitted(string text)
    {
        foreach (var (stored, named) in DataNames) text = text.Replace(stored, named, StringComparison.Ordinal);
        // Dir is DATA_DIR/jobs/ID.
        var jobsDir = Path.GetDirectoryName(Dir);
        if (jobsDir is not null && Path.GetFileName(jobsDir) == "jobs" && Path.GetDirectoryName(jobsDir) is { } dataDir) text = ServerPaths.Hide(text, dataDir);
        return text;
    }

    /// <summary>
    /// Stored data path → the name its submitter gave it, for each data file of <paramref name="running"/> that differs
    /// from <paramref name="submitted"/>'s (the files a coordinator copied into a job directory).
    /// </summary>
    public static Dictionary<string, string> NamesOf(JobSpec submitted, JobSpec running)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (named, stored) in new[] { (submitted.Data.Train, running.Data.Train), (submitted.Data.Validation, running.Data.Validation) })
            if (named is not null && stored is not null && named != stored) names[stored] = named;
        return names;
    }

    /// <summary>When the job was submitted; never changes.</summary>
    public DateTimeOffset Submitted { get; } = submitted;
    /// <summary>How many workers the job asked for (0: all idle ones); never changes.</summary>
    public int WorkersRequested { get; } = workersRequested;
    private JobProgress progress = new();

    /// <summary>The job's progress now (immutable: a later <see cref="Update"/> replaces it).</summary>
    public JobProgress Progress
    {
        get { lock (gate) return progress; }
    }

    /// <summary>The job's state and progress, read together.</summary>
    public (JobStatus Status, JobProgress Progress) Read()
    {
        lock (gate) return (Status, progress);
    }

    /// <summary>The job as the store keeps it.</summary>
    public JobDocument Document()
    {
        var (status, p) = Read();
        return new JobDocument(Id, Spec.Name, Spec.Task, Owner, WorkersRequested, Submitted, status, p);
    }

    /// <summary>Name of the token that submitted the job ("" when auth was off); never changes.</summary>
    public string Owner { get; } = owner;

    /// <summary>Bytes under the job's directory, as last measured (JobStorage): what it counts against its owner's storage quota.</summary>
    public long StoredBytes
    {
        get => Interlocked.Read(ref storedBytes);
        set => Interlocked.Exchange(ref storedBytes, value);
    }
    private long storedBytes;

    /// <summary>Where the job's record is kept across coordinator restarts (null: in memory only, as in unit tests).</summary>
    public JobStore? Store { get; private set; }

    /// <summary>The job's place in the queue: set each time it is queued (kept by the store, so a restart keeps the order).</summary>
    public long QueueOrder { get; set; }

    /// <summary>Keeps the record in <paramref name="store"/> from now on: state changes at once, progress and ledger steps batched.</summary>
    public void Persist(JobStore store)
    {
        // The store's lock is taken before the record's when it writes (Document): never the other way round.
        var last = store.LastSeq(Id);
        Store = store;
        lock (gate)
        {
            eventSeq = Math.Max(eventSeq, last);
            foreach (var e in unstored) store.Recorded(Id, ++eventSeq, e);
            unstored.Clear();
        }
        Ledger.OnCommit = step => store.Committed(Id, step);
        Ledger.OnRollBack = step => store.RolledBack(Id, step);
    }

    /// <summary>
    /// A job as an earlier coordinator run left it in its store: its state, progress, ledger and place in the queue; its
    /// event history starts with that state and its last progress.
    /// </summary>
    /// <param name="submitted">The spec as its submitter gave it (<see cref="SpecAsSubmitted"/>), when the job directory keeps it.</param>
    /// <param name="onClient">The same, resolved on the submitting machine (<see cref="SpecOnClient"/>).</param>
    public static JobRecord Restore(StoredJob stored, JobSpec spec, string dir, DataReadLimits limits, JobSpec? submitted = null, JobSpec? onClient = null)
    {
        var d = stored.Job;
        var record = new JobRecord(d.Id, spec, dir, d.WorkersRequested, d.Submitted, d.Owner)
        {
            progress = d.Progress,
            Status = d.Status,
            QueueOrder = stored.QueueOrder,
            DataLimits = limits,
            submittedSpec = submitted,
            clientSpec = onClient,
            DataNames = submitted is null ? new Dictionary<string, string>() : NamesOf(submitted, spec),
        };
        record.Ledger.Restore(stored.Ledger);
        record.history.Add(new JobNotice.State(d.Status, d.Progress));
        if (d.Progress.Step > 0)
        {
            var p = d.Progress;
            record.history.Add(new JobNotice.Step(new StepReport { Step = p.Step, TotalSteps = p.TotalSteps, Epoch = p.Epoch, Loss = p.Loss, SamplesPerSecond = p.SamplesPerSecond, Workers = p.WorkerIds.Count }));
        }
        return record;
    }

    /// <summary>
    /// Starts the job's next membership generation (1 for a new job): a restarted job's generations continue its
    /// earlier ones, so workers that kept a ring of an older generation refuse it (fencing).
    /// </summary>
    public long NextGeneration()
    {
        long generation = 0;
        Update(p => p with { Generation = generation = p.Generation + 1 }, publishState: false);
        return generation;
    }

    /// <summary>Where the job stands; changed only by <see cref="Transition"/>.</summary>
    public JobStatus Status { get; private set; } = JobStatus.Queued;

    public bool IsFinished => JobLifecycle.IsFinished(Status);

    /// <summary>
    /// Moves the job by one transition of <see cref="JobLifecycle.Table"/> with its <paramref name="message"/> (and any
    /// <paramref name="alongside"/> change of its record, in the same write): on disk before it returns, and published
    /// to watchers. <see cref="InvalidTransitionException"/> when the table does not allow it.
    /// </summary>
    public void Transition(JobTrigger trigger, string message, Func<JobProgress, JobProgress>? alongside = null) => Move(trigger, message, alongside, null, throwIfRefused: true);

    /// <summary>
    /// <see cref="Transition"/> when the job stands where <paramref name="when"/> says (checked in the same lock) and the
    /// table allows it; false, changing nothing, otherwise (e.g. cancelling a queued job that its runner started meanwhile).
    /// </summary>
    public bool TryTransition(JobTrigger trigger, string message, Func<JobProgress, JobProgress>? alongside = null, Func<JobStatus, bool>? when = null) =>
        Move(trigger, message, alongside, when, throwIfRefused: false);

    private bool Move(JobTrigger trigger, string message, Func<JobProgress, JobProgress>? alongside, Func<JobStatus, bool>? when, bool throwIfRefused)
    {
        message = AsSubmitted(message);
        JobStatus next = default;
        return Write(p =>
        {
            if (when is not null && !when(Status)) return null;
            if (throwIfRefused) next = JobLifecycle.Next($"job {Id}", Status, trigger);
            else if (!JobLifecycle.Table.TryGetValue((Status, trigger), out next)) return null;
            var changed = p with { Message = message };
            return alongside is null ? changed : alongside(changed);
        }, publishState: true, to: () => next);
    }

    /// <summary>
    /// Changes the job's progress (never its state: that is <see cref="Transition"/>'s, and <see cref="JobProgress"/>
    /// holds none) under the lock and publishes the record to watchers.
    /// </summary>
    public void Update(Func<JobProgress, JobProgress> change, bool publishState = true) => Write(change, publishState, to: null);

    /// <param name="change">The new progress, or null to change nothing.</param>
    /// <param name="to">The state to move to (a transition), called under the lock after <paramref name="change"/>; null: the state stays.</param>
    private bool Write(Func<JobProgress, JobProgress?> change, bool publishState, Func<JobStatus>? to)
    {
        JobStatus status;
        JobProgress after;
        bool durable;
        lock (gate)
        {
            var before = progress;
            if (change(before) is not { } changed) return false;
            status = to?.Invoke() ?? Status;
            durable = status != Status || before.Checkpoint != changed.Checkpoint || before.Generation != changed.Generation || before.Restarts != changed.Restarts;
            (Status, progress, after) = (status, changed, changed);
        }
        // A change of state (or of checkpoint, generation, restarts) is on disk before the caller goes on; progress is batched.
        if (durable) Store?.SaveNow(this);
        else Store?.SaveSoon(this);
        if (publishState) Publish(new JobNotice.State(status, after));
        return true;
    }

    /// <summary>
    /// Records and publishes a worker's (or the gathered model's) validation metrics after <paramref name="step"/>, with
    /// the task's derived ones (perplexity and bits per token for language models).
    /// </summary>
    public void PublishEval(long step, EvalMetrics metrics)
    {
        metrics = TrainingTasks.For(Spec).WithDerivedMetrics(metrics);
        Update(p => p with { LastEval = metrics }, publishState: false);
        Publish(new JobNotice.Eval(step, metrics));
    }

    /// <summary>Publishes the record as it is now to watchers (a state event).</summary>
    public void PublishState()
    {
        var (status, p) = Read();
        Publish(new JobNotice.State(status, p));
    }

    /// <summary>Publishes a line of the job's log to its watchers (not kept in the store).</summary>
    public void Log(string text) => Publish(new JobNotice.Log(AsSubmitted(text)));

    /// <summary>Publishes a committed step to the job's watchers and keeps it in the job's metrics history.</summary>
    public void PublishStep(StepReport step) => Publish(new JobNotice.Step(step));

    public void Publish(JobNotice e)
    {
        Channel<JobNotice>[] targets;
        lock (gate)
        {
            // Keep every state change; drop the oldest step events when the history grows long.
            if (history.Count >= MaxHistory)
            {
                var i = history.FindIndex(x => x is JobNotice.Step);
                history.RemoveAt(i >= 0 ? i : 0);
            }
            history.Add(e);
            if (e is JobNotice.Step or JobNotice.Eval)
            {
                if (Store is { } store) store.Recorded(Id, ++eventSeq, e);
                else unstored.Add(e);
            }
            targets = [.. watchers];
        }
        foreach (var w in targets) w.Writer.TryWrite(e);
        if (e is JobNotice.State && IsFinished)
        {
            lock (gate)
            {
                foreach (var w in watchers) w.Writer.TryComplete();
                watchers.Clear();
            }
        }
    }

    /// <summary>
    /// Every step and evaluation event of the job, in order, from its store (so a job of an earlier coordinator run
    /// has them too): what `dtrain metrics` exports and the dashboard draws. Events published after this call reach
    /// watchers (<see cref="Watch"/>).
    /// </summary>
    public IReadOnlyList<JobNotice> History()
    {
        if (Store is { } store)
        {
            store.Flush();
            return store.Events(Id, out _);
        }
        lock (gate) return [.. unstored];
    }

    /// <summary>The events so far followed by live ones; completes when the job has finished.</summary>
    public ChannelReader<JobNotice> Watch()
    {
        var channel = Channel.CreateBounded<JobNotice>(new BoundedChannelOptions(10_000) { FullMode = BoundedChannelFullMode.DropOldest });
        lock (gate)
        {
            foreach (var e in history) channel.Writer.TryWrite(e);
            if (IsFinished) channel.Writer.TryComplete();
            else watchers.Add(channel);
        }
        return channel.Reader;
    }

    public void Unwatch(ChannelReader<JobNotice> reader)
    {
        lock (gate) watchers.RemoveAll(c => c.Reader == reader);
    }
}
