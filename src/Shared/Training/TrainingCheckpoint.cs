using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Distributed.Pipeline;
using Dtrain.Models;
using Dtrain.Specs;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Dtrain.Training.Tasks;

namespace Dtrain.Training;

/// <summary>
/// Maps a training run to checkpoint sections and back: spec, tokenizer, labels, state, model weights, optimizer
/// state, torch RNG state and the carried hidden state, so a resumed run continues where it stopped.
/// </summary>
/// <remarks>
/// Reading trusts nothing inside a section, even of a file whose checksum is right: every malformed section — bad
/// JSON or UTF-8, a truncated or reshaped tensor, an impossible RNG state — is a <see cref="CorruptCheckpointException"/>
/// naming the file and the section, raised in managed code before any byte reaches torch.
/// </remarks>
public static class TrainingCheckpoint
{
    public const string Spec = "spec.json", Tokenizer = "tokenizer.json", Labels = "labels.json", State = "state.json",
        Model = "model.bin", Optimizer = "optimizer.bin", Rng = "rng.bin", Carried = "carried.bin";

    private static readonly JsonSerializerOptions Json = new(JobSpecSerializer.Options) { UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip };

    /// <summary>state.json: metrics may be NaN or infinite (an empty validation split, a diverging run); they are written as "NaN", "Infinity", "-Infinity".</summary>
    private static readonly JsonSerializerOptions StateJson = new(Json) { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    private static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

    /// <summary>The run's state as checkpoint sections; refuses (<see cref="TrainingDivergedException"/>) parameters that are not all finite.</summary>
    public static CheckpointData Capture(JobSpec spec, ITokenizer tokenizer, LabelSet labels, TrainingState state, TrainingEngine engine)
    {
        FiniteParameters.ThrowIfAny(engine.Model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)), state.Step, spec);
        var sections = new Dictionary<string, byte[]>
        {
            [Spec] = Encoding.UTF8.GetBytes(JobSpecSerializer.Serialize(spec)),
            [Tokenizer] = JsonSerializer.SerializeToUtf8Bytes(tokenizer.ToState(), Json),
            [Labels] = JsonSerializer.SerializeToUtf8Bytes(labels.Names, Json),
            [State] = JsonSerializer.SerializeToUtf8Bytes(state, StateJson),
            [Model] = SaveModel(engine.Model),
            [Optimizer] = SaveOptimizer(engine.Optimizer),
            [Rng] = RngState(),
        };
        if (engine.CarriedState is { } carried) sections[Carried] = SaveState(carried);
        return new CheckpointData(state.Step, sections, DateTimeOffset.UtcNow);
    }

    public static JobSpec ReadSpec(CheckpointData data, string source) => Read(source, Spec, () =>
    {
        var json = StrictUtf8.GetString(Require(data, Spec, source));
        try
        {
            return JobSpecSerializer.Parse(json, Spec);
        }
        catch (SpecException e)
        {
            throw new InvalidDataException(string.Join("; ", e.Errors));
        }
    });

    public static ITokenizer ReadTokenizer(CheckpointData data, string source) => Read(source, Tokenizer, () =>
        TokenizerFactory.FromState(JsonSerializer.Deserialize<TokenizerState>(Require(data, Tokenizer, source), Json) ?? throw new InvalidDataException("is null")));

    public static LabelSet ReadLabels(CheckpointData data, string source) => Read(source, Labels, () =>
        new LabelSet(JsonSerializer.Deserialize<string[]>(Require(data, Labels, source), Json) ?? throw new InvalidDataException("is null")));

    public static TrainingState ReadState(CheckpointData data, string source) => Read(source, State, () =>
    {
        var state = JsonSerializer.Deserialize<TrainingState>(Require(data, State, source), StateJson) ?? throw new InvalidDataException("is null");
        if (state.Step != data.Step) throw new InvalidDataException($"says step {state.Step}, the checkpoint is step {data.Step}");
        if (state.SamplesSeen < 0 || !(state.ElapsedSeconds >= 0)) throw new InvalidDataException($"has impossible counters (samples {state.SamplesSeen}, elapsed {state.ElapsedSeconds} s)");
        return state;
    });

    /// <summary>
    /// What a resumed run must take over from the checkpoint it continues, because the weights and optimizer state have
    /// its shape: the task, the model's cell, layers, widths and direction, the optimizer kind and whether it keeps
    /// momentum. Each field where <paramref name="spec"/> differs from <paramref name="saved"/> (the checkpoint's spec),
    /// as its field path and both values (formatted as in a spec: strings quoted).
    /// </summary>
    public static IReadOnlyList<(string Field, string Spec, string Checkpoint)> ResumeMismatches(JobSpec spec, JobSpec saved)
    {
        var result = new List<(string, string, string)>();
        void Same<T>(string path, T mine, T theirs)
        {
            if (!EqualityComparer<T>.Default.Equals(mine, theirs)) result.Add((path, FormatValue(mine), FormatValue(theirs)));
        }
        Same("$.task", spec.Task, saved.Task);
        Same("$.model.cell", spec.Model.Cell, saved.Model.Cell);
        Same("$.model.layers", spec.Model.Layers, saved.Model.Layers);
        Same("$.model.embedding_dim", spec.Model.EmbeddingDim, saved.Model.EmbeddingDim);
        Same("$.model.hidden_size", spec.Model.HiddenSize, saved.Model.HiddenSize);
        Same("$.model.bidirectional", spec.Model.Bidirectional, saved.Model.Bidirectional);
        Same("$.optimizer.kind", spec.Optimizer.Kind, saved.Optimizer.Kind);
        Same("$.optimizer.momentum (zero or not)", spec.Optimizer.Momentum > 0, saved.Optimizer.Momentum > 0);
        return result;
    }

    /// <summary>
    /// `train --resume`: refuses a spec that no longer matches the checkpoint's model or optimizer (the checkpoint is
    /// intact; the spec changed), naming each differing field and both values.
    /// </summary>
    public static void ThrowIfSpecChanged(CheckpointData data, string source, JobSpec spec, string specName)
    {
        var mismatches = ResumeMismatches(spec, ReadSpec(data, source));
        if (mismatches.Count == 0) return;
        throw new ArgumentException(
            $"checkpoint {source} does not match the spec {specName}: " +
            string.Join("; ", mismatches.Select(m => $"{m.Field} is {m.Spec} in the spec, {m.Checkpoint} in the checkpoint")) +
            ". --resume continues the checkpoint's model and optimizer: set the spec back, or train without --resume to start a new run (the earlier run's checkpoints are then moved aside)");
    }

    private static string FormatValue<T>(T value) => value switch
    {
        string s => $"\"{s}\"",
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => value?.ToString() ?? "null",
    };

    /// <summary>
    /// Before a model is built for this checkpoint: the spec, vocabulary and labels it names must describe a model whose
    /// weights fit in its model section, so a damaged spec or tokenizer never makes this process allocate a huge model.
    /// </summary>
    public static void CheckModelFits(CheckpointData data, string source, JobSpec spec, int vocabSize, int classes)
    {
        if (vocabSize < 3) throw new CorruptCheckpointException(source, Tokenizer, $"holds {vocabSize} token(s); a model needs <pad>, <unk> and at least one more");
        var task = TrainingTasks.For(spec);
        if (classes < task.MinimumLabels) throw new CorruptCheckpointException(source, Labels, $"holds {classes} label(s); a classifier needs at least {task.MinimumLabels}");
        var layout = ModelLayout.Of(spec.Model, vocabSize, task.Outputs(vocabSize, classes));
        var have = Require(data, Model, source).LongLength;
        if (layout.Total * sizeof(float) > have)
        {
            throw new CorruptCheckpointException(source, Model,
                $"holds {have:N0} bytes, but the spec's model ({spec.Model.Cell}, {spec.Model.Layers} layer(s) × hidden {spec.Model.HiddenSize}, embedding {spec.Model.EmbeddingDim}) " +
                $"with the checkpoint's vocabulary of {vocabSize:N0}{(task.HasLabels ? $" and {classes} labels" : "")} has {layout.Total:N0} parameters ({layout.Total * sizeof(float):N0} bytes)");
        }
    }

    /// <summary>
    /// Checks, without loading anything, that the checkpoint's model weights and training state (optimizer state, torch
    /// RNG state, carried hidden state) fit <paramref name="engine"/> (built from the spec that resumes it): what a resume
    /// runs before any byte reaches torch — locally (<see cref="Restore"/>) and on a cluster, where the coordinator
    /// refuses a crafted or mismatched checkpoint at submit. A <see cref="CorruptCheckpointException"/> names the section.
    /// </summary>
    public static void CheckResumable(CheckpointData data, string source, TrainingEngine engine)
    {
        var model = Require(data, Model, source);
        Read(source, Model, () => TorchStateFormat.CheckModule(model, engine.Model));
        CheckTrainingState(data, source, engine);
    }

    /// <summary>The optimizer, RNG and carried state of <see cref="CheckResumable"/>.</summary>
    private static void CheckTrainingState(CheckpointData data, string source, TrainingEngine engine)
    {
        var optimizer = Require(data, Optimizer, source);
        Read(source, Optimizer, () => TorchStateFormat.CheckOptimizer(optimizer, engine.Optimizer, engine.Parameters));
        var rng = Require(data, Rng, source);
        using (var current = random.get_rng_state())
        {
            var length = current.bytes.Length;
            Read(source, Rng, () => TorchStateFormat.CheckRngState(rng, length));
        }
        if (data.Sections.TryGetValue(Carried, out var carriedBytes))
            Read(source, Carried, () => LoadState(carriedBytes, engine.Spec)).Dispose();
    }

    /// <summary>Loads weights (and, when <paramref name="withOptimizer"/>, optimizer, RNG and carried state) into an engine built from the same spec.</summary>
    public static void Restore(CheckpointData data, string source, TrainingEngine engine, bool withOptimizer)
    {
        var model = Require(data, Model, source);
        Read(source, Model, () => TorchStateFormat.CheckModule(model, engine.Model));
        // Every section is checked before any is loaded: a bad one leaves the engine as it was.
        if (withOptimizer) CheckTrainingState(data, source, engine);
        using (var ms = new MemoryStream(model))
            engine.Model.load(ms);
        if (!withOptimizer) return;

        var optimizer = Require(data, Optimizer, source);
        using (var ms = new MemoryStream(optimizer))
        using (var reader = new BinaryReader(ms))
            ((OptimizerHelper)engine.Optimizer).load_state_dict(reader);

        var rng = random.get_rng_state();
        rng.bytes = Require(data, Rng, source);
        random.set_rng_state(rng);

        RecurrentState? carried = null;
        if (data.Sections.TryGetValue(Carried, out var carriedBytes))
        {
            carried = Read(source, Carried, () => LoadState(carriedBytes, engine.Spec));
            var rows = carried.H.shape[1];
            if (rows != engine.Spec.Training.BatchSize)
            {
                carried.Dispose();
                throw new InvalidDataException(
                    $"{source}: the carried hidden state holds {rows} streams, but training.batch_size is {engine.Spec.Training.BatchSize}; resume with the batch size the checkpoint was trained with");
            }
        }
        engine.CarriedState = carried;
    }

    /// <summary>Runs a section reader, turning whatever its malformed contents raise into a <see cref="CorruptCheckpointException"/> naming file and section.</summary>
    private static T Read<T>(string source, string section, Func<T> read)
    {
        try
        {
            return read();
        }
        catch (Exception e) when (e is JsonException or InvalidDataException or DecoderFallbackException or EndOfStreamException or FormatException or NotSupportedException
            || e is ArgumentException and not ArgumentNullException)
        {
            var message = e is DecoderFallbackException ? "is not valid UTF-8" : e.Message;
            throw new CorruptCheckpointException(source, section, message, e);
        }
    }

    private static void Read(string source, string section, Action check) => Read(source, section, () => { check(); return 0; });

    private static byte[] Require(CheckpointData data, string name, string source) =>
        data.Sections.TryGetValue(name, out var bytes) ? bytes : throw new CorruptCheckpointException(source, $"has no section \"{name}\"");

    /// <summary>
    /// The generator's state, copied while the tensor holding it is alive: <c>get_rng_state().bytes</c> is a span over
    /// native memory that outlives the unreferenced tensor, and a collection before or during the copy (started by
    /// ToArray's own allocation, or by any other thread) freed that memory under it.
    /// </summary>
    private static byte[] RngState()
    {
        using var state = random.get_rng_state();
        return state.bytes.ToArray();
    }

    private static byte[] SaveModel(nn.Module model)
    {
        using var ms = new MemoryStream();
        model.save(ms);
        return ms.ToArray();
    }

    private static byte[] SaveOptimizer(optim.Optimizer optimizer)
    {
        using var ms = new MemoryStream();
        using (var writer = new BinaryWriter(ms, Encoding.UTF8, leaveOpen: true))
            ((OptimizerHelper)optimizer).save_state_dict(writer);
        return ms.ToArray();
    }

    private static byte[] SaveState(RecurrentState state)
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        WriteTensor(w, state.H);
        w.Write(state.C is not null);
        if (state.C is not null) WriteTensor(w, state.C);
        w.Flush();
        return ms.ToArray();
    }

    /// <summary>The carried state: h, and c exactly for an LSTM, each (layers, streams, hidden) of the spec's model; nothing after them.</summary>
    private static RecurrentState LoadState(byte[] bytes, JobSpec spec)
    {
        if (TrainingTasks.Find(spec.Task) is not { PredictsNextToken: true }) throw new InvalidDataException("a classifier carries no hidden state");
        using var r = new BinaryReader(new MemoryStream(bytes));
        var h = ReadTensor(r, spec.Model, "h");
        try
        {
            var hasC = r.ReadByte() switch { 0 => false, 1 => true, var b => throw new InvalidDataException($"cell-state flag is {b}, not a boolean") };
            if (hasC != (spec.Model.Cell == CellKinds.Lstm))
                throw new InvalidDataException(hasC ? $"holds a cell state, which a {spec.Model.Cell} has not" : "has no cell state, which an LSTM needs");
            var c = hasC ? ReadTensor(r, spec.Model, "c") : null;
            if (c is not null && !c.shape.SequenceEqual(h.shape))
            {
                c.Dispose();
                throw new InvalidDataException($"c has shape [{string.Join(", ", c.shape)}], h [{string.Join(", ", h.shape)}]");
            }
            if (r.BaseStream.Position != bytes.Length)
            {
                c?.Dispose();
                throw new InvalidDataException($"{bytes.Length - r.BaseStream.Position} unexpected byte(s) at the end");
            }
            return new RecurrentState(h, c);
        }
        catch
        {
            h.Dispose();
            throw;
        }
    }

    private static void WriteTensor(BinaryWriter w, Tensor t)
    {
        using var cpuT = t.cpu().contiguous();
        w.Write(cpuT.shape.Length);
        foreach (var d in cpuT.shape) w.Write(d);
        var data = cpuT.data<float>().ToArray();
        w.Write(data.Length);
        foreach (var v in data) w.Write(v);
    }

    private static Tensor ReadTensor(BinaryReader r, ModelSpec model, string name)
    {
        var rank = r.ReadInt32();
        if (rank != 3) throw new InvalidDataException($"{name} has rank {rank}, expected 3 (layers, streams, hidden)");
        var shape = new long[rank];
        for (var i = 0; i < rank; i++) shape[i] = r.ReadInt64();
        if (shape[0] != model.Layers || shape[2] != model.HiddenSize || shape[1] is < 1 or > JobSpecValidator.MaxBatch)
            throw new InvalidDataException($"{name} has shape [{string.Join(", ", shape)}]; the model needs [{model.Layers}, streams (1..{JobSpecValidator.MaxBatch}), {model.HiddenSize}]");
        var n = r.ReadInt32();
        if (n != shape[0] * shape[1] * shape[2]) throw new InvalidDataException($"{name}: {n} values for shape [{string.Join(", ", shape)}]");
        if (r.BaseStream.Length - r.BaseStream.Position < 4L * n) throw new InvalidDataException($"{name}: truncated, {n} values need {4L * n} bytes, {r.BaseStream.Length - r.BaseStream.Position} left");
        var data = new float[n];
        for (var i = 0; i < n; i++) data[i] = r.ReadSingle();
        var t = tensor(data, shape);
        t.DetachFromDisposeScope();
        return t;
    }
}
