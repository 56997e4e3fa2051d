using Dtrain.Checkpoints;
using Dtrain.Cluster;
using Dtrain.Data;
using Dtrain.Distributed;
using Dtrain.Specs;
using Dtrain.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Dtrain.Training.Tasks;

namespace Dtrain.Server;

/// <summary>
/// Where a resumed job starts: a checkpoint (of an earlier job, or uploaded) with its step, tokenizer, labels and
/// spec. The new job's model and optimizer must match the checkpoint's; its parallelism may differ — a model
/// trained on 4 pipeline stages continues on 2 data-parallel replicas, or the other way round — because the
/// checkpoint holds the whole model under its whole-model names and every worker takes the parameters it holds.
/// </summary>
public sealed class ResumePoint
{
    public string From { get; }
    public string Path { get; }
    public CheckpointData Checkpoint { get; }
    public JobSpec Spec { get; }
    public TrainingState State { get; }
    public ITokenizer Tokenizer { get; }
    public LabelSet Labels { get; }

    private ResumePoint(string from, string path, CheckpointData checkpoint)
    {
        From = from;
        Path = path;
        Checkpoint = checkpoint;
        try
        {
            Spec = TrainingCheckpoint.ReadSpec(checkpoint, path);
            State = TrainingCheckpoint.ReadState(checkpoint, path);
            Tokenizer = TrainingCheckpoint.ReadTokenizer(checkpoint, path);
            Labels = TrainingCheckpoint.ReadLabels(checkpoint, path);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or SpecException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: not a training checkpoint: {e.Message}", e);
        }
        if (!checkpoint.Sections.ContainsKey(TrainingCheckpoint.Model) || !checkpoint.Sections.ContainsKey(TrainingCheckpoint.Optimizer))
            throw new InvalidDataException($"{path}: the checkpoint has no model weights or optimizer state to resume from");
    }

    /// <summary>The newest valid checkpoint of the job in <paramref name="jobDir"/>; null when it has none.</summary>
    public static ResumePoint? OfJob(string jobId, string jobDir)
    {
        var dir = System.IO.Path.Combine(jobDir, "checkpoints");
        if (!Directory.Exists(dir)) return null;
        var latest = new CheckpointStore(dir, 1_000_000).LoadLatest();
        return latest is null ? null : new ResumePoint(jobId, latest.Path, latest.Data);
    }

    /// <summary>A checkpoint file (an upload), verified.</summary>
    public static ResumePoint OfFile(string description, string path) => new(description, path, CheckpointStore.ReadFile(path));

    /// <summary>Refuses a spec whose model or optimizer cannot take this checkpoint's state (field paths, both values).</summary>
    public void CheckCompatible(JobSpec spec, string source)
    {
        // From is "job-0003" or "an uploaded checkpoint".
        var errors = TrainingCheckpoint.ResumeMismatches(spec, Spec)
            .Select(m => new SpecError(m.Field, $"{m.Spec} here, {m.Checkpoint} in the checkpoint this job resumes from ({From}): a resumed job keeps the checkpoint's model and optimizer"))
            .ToList();
        if (errors.Count > 0) throw new SpecException(source, errors);
        var least = TrainingTasks.For(spec).MinimumLabels;
        if (Labels.Count < least)
            throw new SpecException(source, [new SpecError("$.task", $"the checkpoint this job resumes from ({From}) has {Labels.Count} label(s); a classifier needs at least {least}")]);
    }

    /// <summary>
    /// Refuses a checkpoint whose sections do not fit the model <paramref name="spec"/> builds with its vocabulary and
    /// labels — its model weights, optimizer state (kind, counts, every tensor's dtype and shape), torch RNG state and
    /// carried hidden state — with the section named, as `train --resume` does: a crafted or mismatched checkpoint is
    /// refused at submit, in managed code, before any byte of it reaches libtorch (whose errors abort the process).
    /// </summary>
    public void Verify(JobSpec spec)
    {
        using var torch = new Runtime.TorchThread("resume-check", 1);
        torch.RunAsync(() =>
        {
            try
            {
                TrainingCheckpoint.CheckModelFits(Checkpoint, Path, spec, Tokenizer.VocabSize, Labels.Count);
                using var engine = new TrainingEngine(spec with { Parallelism = null }, Tokenizer.VocabSize, Labels.Count, CPU);
                TrainingCheckpoint.CheckResumable(Checkpoint, Path, engine);
            }
            catch (CorruptCheckpointException e)
            {
                // "job-0003 (ckpt-000000007.dtck)" or "an uploaded checkpoint": no path on this coordinator.
                var what = From.StartsWith("job-", StringComparison.Ordinal) ? $"{From} ({System.IO.Path.GetFileName(Path)})" : From;
                throw new InvalidDataException($"cannot resume from {what}: {e.Reason}", e);
            }
        }).GetAwaiter().GetResult();
    }

    /// <summary>
    /// The checkpoint's parameters and optimizer state, one tensor per parameter under its whole-model name, and
    /// their checksum (what the workers must report once loaded). Runs torch: call it on a torch thread.
    /// </summary>
    public (List<ParameterTensor> Tensors, double Checksum) Tensors(JobSpec spec)
    {
        var classes = Labels.Count;
        TrainingCheckpoint.CheckModelFits(Checkpoint, Path, spec, Tokenizer.VocabSize, classes);
        using var engine = new TrainingEngine(spec with { Parallelism = null }, Tokenizer.VocabSize, classes, CPU);
        // Checked again before loading (a job restarting from its own checkpoint comes here without a submit).
        TrainingCheckpoint.CheckResumable(Checkpoint, Path, engine);
        using (var ms = new MemoryStream(Checkpoint.Sections[TrainingCheckpoint.Model]))
            engine.Model.load(ms);
        using (var ms = new MemoryStream(Checkpoint.Sections[TrainingCheckpoint.Optimizer]))
        using (var reader = new BinaryReader(ms))
            ((OptimizerHelper)engine.Optimizer).load_state_dict(reader);
        var tensors = ParameterTransfer.Capture(engine.Model.named_parameters().Select(p => (p.name, p.parameter)), (OptimizerHelper)engine.Optimizer);
        return (tensors, ParameterChecksums.Sum(engine.Parameters));
    }
}
