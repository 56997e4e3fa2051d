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
/// <see cref="InvalidOperationException"/> naming the job, the dataset's URI and the shard. A local shard's SHA-256 is
/// checked in the background (<see cref="ShardVerification.Background"/>), so the first step does not wait for it: a
/// shard found altered fails the next step, and the job's last step (and every evaluation) waits for the checks of the
/// shards it read, so a job never ends on bytes that were not the ones prepared.
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
        if (Source.StepsPerEpoch != stepsPerEpoch)
            throw new InvalidOperationException($"job {jobId}: dataset {dataset.Uri} makes {Source.StepsPerEpoch} steps per epoch here, the coordinator planned {stepsPerEpoch}: the dataset is not the one the job was planned from");
    }

    public StoredDataset Dataset { get; }
    /// <summary>The dataset's splits (for evaluation on its validation split).</summary>
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
    /// Checks the dataset's validation split before the job evaluates on it (once): a language model's holds at least 2
    /// tokens, every id is inside the vocabulary and every record (a classifier's) has tokens and a label of the set —
    /// a bad id would reach libtorch, whose errors abort the process. A failure is an
    /// <see cref="InvalidOperationException"/> naming the job, the dataset and the file.
    /// </summary>
    public void CheckValidation()
    {
        lock (validationGate)
        {
            if (validationChecked) return;
            var split = Dataset.Validation;
            string Problem(string file, string problem) => $"job {jobId}: evaluation: dataset {Dataset.Uri}: {file}: {problem}";
            if (!task.HasLabels && split.Tokens < 2)
                throw new InvalidOperationException(Problem(DatasetLayout.ManifestFile, $"the validation split holds {split.Tokens} token(s); a language model needs at least 2 to evaluate"));
            try
            {
                for (var i = 0; i < split.Entry.Shards.Count; i++)
                {
                    var shard = split.Shard(i);
                    var file = shard.Entry.Tokens.Name;
                    if (task.HasLabels)
                    {
                        for (long k = 0; k < shard.Records; k++)
                        {
                            var (ids, label) = shard.Record(k);
                            if (ids.Length == 0) throw new InvalidOperationException(Problem(file, $"validation record {k} has no tokens"));
                            if ((uint)label >= (uint)labels) throw new InvalidOperationException(Problem(shard.Entry.Labels?.Name ?? file, $"validation record {k}: label id {label} outside [0, {labels})"));
                            CheckIds(ids, k, "record", file);
                        }
                    }
                    else
                    {
                        var chunk = new int[65536];
                        for (long at = 0; at < shard.TokenCount; at += chunk.Length)
                        {
                            var n = (int)Math.Min(chunk.Length, shard.TokenCount - at);
                            shard.Read(at, chunk.AsSpan(0, n));
                            for (var j = 0; j < n; j++)
                                if ((uint)chunk[j] >= (uint)vocabSize)
                                    throw new InvalidOperationException(Problem(file, $"id {chunk[j]} at token {at + j} outside the vocabulary [0, {vocabSize})"));
                        }
                    }
                }
            }
            catch (DatasetException e)
            {
                throw new InvalidOperationException($"job {jobId}: evaluation: {e.Message}", e);
            }
            validationChecked = true;

            void CheckIds(int[] ids, long record, string what, string file)
            {
                foreach (var id in ids)
                    if ((uint)id >= (uint)vocabSize)
                        throw new InvalidOperationException(Problem(file, $"validation {what} {record}: id {id} outside the vocabulary [0, {vocabSize})"));
            }
        }
    }

    /// <summary>
    /// Fails step <paramref name="step"/> if a shard read so far turned out altered (its background SHA-256 check); the
    /// job's last step first waits for the checks still running.
    /// </summary>
    private async Task CheckedAsync(long step, CancellationToken cancel)
    {
        try
        {
            if (totalSteps > 0 && step + 1 >= totalSteps) await Dataset.VerifiedAsync(cancel).ConfigureAwait(false);
            else Dataset.ThrowIfCorrupt();
        }
        catch (DatasetException e)
        {
            throw new InvalidOperationException($"job {jobId}: step {step}: {e.Message}", e);
        }
    }

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
