using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Runtime;
using Dtrain.Specs;
using Dtrain.Training;

namespace Dtrain.Inference;

/// <summary>A model loaded from a checkpoint with the spec, tokenizer and labels it was trained with, ready for inference.</summary>
public sealed class TrainedModel : IDisposable
{
    public required string Path { get; init; }
    public required JobSpec Spec { get; init; }
    public required ITokenizer Tokenizer { get; init; }
    public required LabelSet Labels { get; init; }
    public required TrainingState State { get; init; }
    public required TrainingEngine Engine { get; init; }

    /// <summary>Loads a checkpoint file, or the model a run directory stands for (<see cref="RunDirectory.LoadLatest"/>: the newest of its checkpoints/ and model.dtck).</summary>
    public static TrainedModel Load(string path, string device = "cpu", Action<string>? warn = null)
    {
        CheckpointData data;
        string file;
        if (Directory.Exists(path))
        {
            var latest = RunDirectory.LoadLatest(path)
                ?? throw new FileNotFoundException(RunDirectory.NothingIn(path));
            foreach (var s in latest.Skipped) warn?.Invoke($"warning: skipping corrupt checkpoint {s.Path}: {s.Reason}");
            (data, file) = (latest.Data, latest.Path);
        }
        else if (File.Exists(path))
        {
            (data, file) = (CheckpointStore.ReadFile(path), path);
        }
        else
        {
            throw new FileNotFoundException($"checkpoint not found: {path}");
        }
        var spec = TrainingCheckpoint.ReadSpec(data, file);
        var tokenizer = TrainingCheckpoint.ReadTokenizer(data, file);
        var labels = TrainingCheckpoint.ReadLabels(data, file);
        var state = TrainingCheckpoint.ReadState(data, file);
        TrainingCheckpoint.CheckModelFits(data, file, spec, tokenizer.VocabSize, labels.Count);
        var engine = new TrainingEngine(spec, tokenizer.VocabSize, labels.Count, DeviceSelector.Resolve(device, warn));
        try
        {
            TrainingCheckpoint.Restore(data, file, engine, withOptimizer: false);
        }
        catch
        {
            engine.Dispose();
            throw;
        }
        engine.Model.eval();
        return new TrainedModel { Path = file, Spec = spec, Tokenizer = tokenizer, Labels = labels, State = state, Engine = engine };
    }

    public void Dispose() => Engine.Dispose();
}
