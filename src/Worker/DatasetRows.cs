using Dtrain.Cluster;
using Dtrain.Data.Datasets;
using Dtrain.Specs;
using Dtrain.Training;
using Dtrain.Training.Tasks;

namespace Dtrain.Worker;

/// <summary>
/// A dataset job's rows, read by this worker: the coordinator sends only the plan (each step's row range), and the
/// rows come from the job's batch source over the dataset — the same <see cref="IBatchSource"/> the coordinator and a
/// single process build, so the rows are exactly theirs. The next step's rows are read on a background task while the
/// step before runs, so a step rarely waits for data. Rows are checked as the task checks rows from elsewhere before
/// they reach torch; a failure to read (a missing, truncated or changed shard, storage unreachable) is an
/// <see cref="InvalidOperationException"/> naming the job, the dataset's URI and the shard. What the job reads is checked
/// against the manifest's SHA-256 (<see cref="ShardVerification.Background"/>): with format version 2 only the blocks its
/// reads touch — a local shard's on the background thread, an S3 shard's as each block arrives — with version 1 each
/// shard read, whole, in the background. The first step does not wait for the checks: a shard found altered fails the
/// next step, and the job's last step (and every evaluation) waits for the checks of what it read (and only that), so a
/// job never ends on bytes that were not the ones prepared. The checks run at the lowest priority
/// for the first half of the job's steps and at normal priority from then on (<see cref="StoredDataset.HurryVerification"/>),
/// so that they are done before the last step on a busy machine — a short job over a large dataset (30 steps over 1 GB)
/// otherwise had its last step wait for them.
/// </summary>
public sealed class DatasetRows : IDisposable
{
    private readonly string jobId;
    private readonly ITrainingTask task;
    private readonly int vocabSize, labels;
    private readonly Dictionary<(long Step, int Start, int Rows), Task<BatchRows?>> reads = [];
    private readonly object validationGate = new();
    private readonly long totalSteps;
    private bool validationChecked;

    /// <param name="totalSteps">The job's steps: its last one waits for the background checks of the shards read (0: none is last).</param>
    public DatasetRows(string jobId, JobSpec spec, StoredDataset dataset, long stepsPerEpoch, long totalSteps = 0)
    {
        this.jobId = jobId;
        this.totalSteps = totalSteps;
        Dataset = dataset;
        task = TrainingTasks.For(spec);
        Data = PreparedData.FromDataset(dataset);
        vocabSize = dataset.Tokenizer.VocabSize;
        labels = dataset.Labels.Count;
        Source = task.TrainBatches(spec, Data);
        var validation = new CheckedValidationSplit(dataset, vocabSize, labels, Problem);
        Validation = new PreparedData
        {
            Tokenizer = dataset.Tokenizer, Labels = dataset.Labels, Dataset = dataset, Report = Data.Report,
            ValidationStream = validation, ValidationRecords = validation,
        };
        if (Source.StepsPerEpoch != stepsPerEpoch)
            throw new InvalidOperationException($"job {jobId}: dataset {dataset.Uri} makes {Source.StepsPerEpoch} steps per epoch here, the coordinator planned {stepsPerEpoch}: the dataset is not the one the job was planned from");
    }

    public StoredDataset Dataset { get; }
    /// <summary>The dataset's splits as read (unchecked: the training rows are checked per step, the validation split through <see cref="Validation"/>).</summary>
    public PreparedData Data { get; }
    public IBatchSource Source { get; }

    /// <summary>Starts reading the rows of planned step <paramref name="s"/> in the background, unless already started.</summary>
    public void Prefetch(ShardRows s)
    {
        if (!s.Planned || s.Rows == 0) return;
        lock (reads)
        {
            var key = (s.Step, s.RowStart, s.Rows);
            if (!reads.ContainsKey(key)) reads[key] = Task.Run(() => Read(s));
        }
    }

    /// <summary>
    /// The rows of planned step <paramref name="s"/>: the prefetched ones or read now, awaited without blocking a thread
    /// (a read failure is its <see cref="InvalidOperationException"/> naming the job, the dataset and the shard).
    /// </summary>
    public async Task<BatchRows?> TakeAsync(ShardRows s, CancellationToken cancel)
    {
        if (s.Rows == 0)
        {
            await CheckedAsync(s.Step, cancel).ConfigureAwait(false);
            return null;
        }
        Task<BatchRows?>? read;
        lock (reads) reads.Remove((s.Step, s.RowStart, s.Rows), out read);
        read ??= Task.Run(() => Read(s));
        try
        {
            var rows = await read.WaitAsync(cancel).ConfigureAwait(false);
            await CheckedAsync(s.Step, cancel).ConfigureAwait(false);
            return rows;
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            // The read ends on its own; its error no longer matters.
            _ = read.ContinueWith(x => _ = x.Exception, TaskScheduler.Default);
            throw;
        }
    }

    /// <summary>
    /// The dataset's validation split as evaluation reads it: every id, record and label is checked as it is read, before
    /// it reaches torch (a bad id would reach libtorch, whose errors abort the process), so only what evaluation reads is
    /// read — the first eval_batches batches, not the whole split. A language model's ids inside the vocabulary; a
    /// classifier's records have tokens, ids inside the vocabulary and a label of the set. A failure is an
    /// <see cref="InvalidOperationException"/> naming the job, the dataset and the file.
    /// </summary>
    public PreparedData Validation { get; }

    /// <summary>
    /// Checks what the manifest says of the validation split before the job first evaluates on it: a language model's
    /// holds at least 2 tokens (its ids are checked as evaluation reads them, <see cref="Validation"/>).
    /// </summary>
    public void CheckValidation()
    {
        lock (validationGate)
        {
            if (validationChecked) return;
            var split = Dataset.Validation;
            if (!task.HasLabels && split.Tokens < 2)
                throw Problem(DatasetLayout.ManifestFile, $"the validation split holds {split.Tokens} token(s); a language model needs at least 2 to evaluate");
            validationChecked = true;
        }
    }

    private InvalidOperationException Problem(string file, string problem) => new($"job {jobId}: evaluation: dataset {Dataset.Uri}: {file}: {problem}");

    /// <summary>
    /// Fails step <paramref name="step"/> if a shard read so far turned out altered (its background SHA-256 check); the
    /// job's last step first waits for the checks still running. From half the job's steps on, the checks left run at
    /// normal priority.
    /// </summary>
    private async Task CheckedAsync(long step, CancellationToken cancel)
    {
        try
        {
            if (HurriesVerification(step)) Dataset.HurryVerification();
            if (totalSteps > 0 && step + 1 >= totalSteps) await Dataset.VerifiedAsync(cancel).ConfigureAwait(false);
            else Dataset.ThrowIfCorrupt();
        }
        catch (DatasetException e)
        {
            throw new InvalidOperationException($"job {jobId}: step {step}: {e.Message}", e);
        }
    }

    /// <summary>Whether the background checks run at normal priority once step <paramref name="step"/> is taken: from half the job's steps on (a job of known length).</summary>
    internal bool HurriesVerification(long step) => totalSteps > 0 && 2 * (step + 1) >= totalSteps;

    /// <summary>Waits for the background checks of the shards read so far (an evaluation's); a mismatch is the job's <see cref="InvalidOperationException"/> naming the dataset and the shard.</summary>
    public async Task VerifiedAsync(string what, CancellationToken cancel)
    {
        try
        {
            await Dataset.VerifiedAsync(cancel).ConfigureAwait(false);
        }
        catch (DatasetException e)
        {
            throw new InvalidOperationException($"job {jobId}: {what}: {e.Message}", e);
        }
    }

    /// <summary>Forgets prefetched rows (a new generation plans other ranges).</summary>
    public void Clear()
    {
        lock (reads) reads.Clear();
    }

    private BatchRows? Read(ShardRows s)
    {
        var what = $"step {s.Step}";
        BatchRows? rows;
        try
        {
            rows = Source.GetRows(new StepPosition(s.Step / Source.StepsPerEpoch, s.Step % Source.StepsPerEpoch), s.RowStart, s.Rows);
        }
        catch (DatasetException e)
        {
            throw new InvalidOperationException($"job {jobId}: {what}: {e.Message}", e);
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new InvalidOperationException($"job {jobId}: {what}: rows {s.RowStart}..{s.RowStart + s.Rows - 1} are outside dataset {Dataset.Uri} ({e.Message})", e);
        }
        if (rows is null || rows.Rows != s.Rows || rows.Count != s.Count)
            throw new InvalidOperationException($"job {jobId}: {what}: dataset {Dataset.Uri} gives {rows?.Rows ?? 0} rows counting {rows?.Count ?? 0}, the plan says {s.Rows} counting {s.Count}: the dataset is not the one the job was planned from");
        try
        {
            task.CheckRows(rows, vocabSize, labels, $"{what} from dataset {Dataset.Uri}");
        }
        catch (ArgumentException e)
        {
            throw new InvalidOperationException($"job {jobId}: {e.Message}", e);
        }
        return rows;
    }

    public void Dispose()
    {
        Task[] pending;
        lock (reads)
        {
            pending = [.. reads.Values];
            reads.Clear();
        }
        // A read in flight ends on its own (it reads memory-mapped or cached shards); its error no longer matters.
        foreach (var t in pending) t.ContinueWith(x => _ = x.Exception, TaskScheduler.Default).Wait();
        Dataset.Dispose();
    }
}
